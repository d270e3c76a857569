//! The multi-process checks: `mpirun` starts 2 and 3 ranks of `shard_replay`, each with its
//! own device (lavapipe where there is no GPU), on a PyTorch trace with loss scaling and
//! clipping (some steps skipped for non-finite gradients); rank 0 checks the gathered result
//! against the single-process reference bit for bit and against PyTorch. Needs Open MPI's
//! `mpirun` on the PATH (Debian: `apt-get install openmpi-bin libopenmpi-dev`).

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use wgpu_adamw::shard::{reshard, ShardLayout};
use wgpu_adamw::OptimizerState;

/// One `mpirun` at a time: the ranks share the machine's cores.
static MPIRUN: Mutex<()> = Mutex::new(());

fn trace(name: &str) -> String {
    format!(
        "{}/../../tests/data/{name}.safetensors",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Runs `shard_replay args` on `np` ranks; returns rank 0's output, failing on a non-zero
/// exit or a FAIL line.
fn mpirun(np: usize, args: &[&str]) -> String {
    let _one = MPIRUN.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new("mpirun")
        // Root in CI containers; more ranks than cores on small machines.
        .args([
            "--allow-run-as-root",
            "--oversubscribe",
            "-np",
            &np.to_string(),
        ])
        .arg(env!("CARGO_BIN_EXE_shard_replay"))
        .args(args)
        .output()
        .expect("mpirun (Open MPI) on the PATH: apt-get install -y openmpi-bin libopenmpi-dev");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("mpirun -np {np} {args:?}\n{stdout}{stderr}");
    assert!(out.status.success(), "mpirun -np {np} {args:?} failed");
    assert!(!stdout.contains("FAIL"), "a check failed");
    stdout
}

fn passes(out: &str) -> usize {
    out.lines().filter(|l| l.starts_with("PASS")).count()
}

#[test]
fn two_ranks_equal_one_process_bit_for_bit() {
    let out = mpirun(2, &["run", &trace("amp_clip")]);
    // Parameters, both moments, the other streams, lr, skips + scale, and PyTorch.
    assert_eq!(passes(&out), 7, "{out}");
}

#[test]
fn three_ranks_equal_one_process_bit_for_bit() {
    // 16-bit parameters and gradients, f32 master weights, a GradScaler and accumulation; the
    // even cut of 1232 elements at 821 splits a 32-bit word of two f16 values.
    let out = mpirun(3, &["run", &trace("x_mp_f16_master_scaler_accum")]);
    assert_eq!(passes(&out), 7, "{out}");
    // 50 steps of 2 calls: one exchange per step, on the call that completes it (the other
    // call never reads the gathered entries, so it is not exchanged).
    assert!(
        out.contains("100 calls") && out.contains("(50 exchanges)"),
        "{out}"
    );
}

#[test]
fn resharding_two_ranks_to_three_resumes_bit_exactly() {
    let dir: PathBuf = std::env::temp_dir().join(format!("wgpu-adamw-mpi-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let t = trace("amp_clip");
    let d = dir.to_str().unwrap();
    let out = mpirun(2, &["save", &t, "30", d]);
    assert_eq!(passes(&out), 6, "{out}");
    // Offline, as `wgpu-adamw reshard` does: the two shards' files to three.
    let two: Vec<OptimizerState> = (0..2)
        .map(|r| OptimizerState::load(dir.join(format!("rank-{r}-of-2.safetensors"))).unwrap())
        .collect();
    let total = two[0].shard.as_ref().unwrap().layout.total();
    let three = reshard(&two, &ShardLayout::even(total, 3).unwrap()).unwrap();
    for (r, s) in three.iter().enumerate() {
        s.save(dir.join(format!("rank-{r}-of-3.safetensors")))
            .unwrap();
    }
    let out = mpirun(3, &["resume", &t, "30", d, "2"]);
    assert_eq!(passes(&out), 6, "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}
