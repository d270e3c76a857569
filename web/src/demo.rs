//! The learning-curve demo in the browser: the demo crate's MLP ([`GpuMlp`]) trained on the
//! device under one of its schedules, a few steps per call, so the page can plot the loss and
//! the lr as they come. The runs are the native demo's (`wgpu-adamw demo --seeds 1`): same
//! data, initial weights (seed 0), minibatch order and logged steps.

use crate::{gpu, js_error};
use wasm_bindgen::prelude::*;
use wgpu_adamw::{read_buffer_async, wgpu};
use wgpu_adamw_demo::gpu::{GpuMlp, LR_RECORD_BYTES};
use wgpu_adamw_demo::{logged_steps, schedules, DemoOptions};

/// The default schedules' names for a run of `steps` steps, as a JSON array.
#[wasm_bindgen]
pub fn demo_schedules(steps: u32) -> String {
    let names: Vec<&str> = schedules(steps, DemoOptions::default().lr)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    serde_json::json!(names).to_string()
}

/// One schedule's run from seed 0, advanced by [`DemoRun::advance`].
#[wasm_bindgen]
pub struct DemoRun {
    name: String,
    model: GpuMlp,
    steps: u32,
    /// The next step to train (1-based).
    next_step: u32,
    /// The steps that log an evaluation, and how many of them are recorded so far.
    logged: Vec<u32>,
    next_log: usize,
    log: wgpu::Buffer,
    lr_log: wgpu::Buffer,
}

/// Starts the run of the default schedule `name` for `steps` steps (the native demo's other
/// settings: [`DemoOptions::default`]).
#[wasm_bindgen]
pub async fn demo_run(name: String, steps: u32) -> Result<DemoRun, JsValue> {
    let ctx = gpu().await?;
    let opts = DemoOptions {
        steps: steps.max(1),
        seeds: 1,
        ..Default::default()
    };
    let (_, schedule) = schedules(opts.steps, opts.lr)
        .into_iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| JsValue::from_str(&format!("no schedule named `{name}`")))?;
    let (train, test) = (opts.train_set(), opts.test_set());
    let mut model = GpuMlp::new(
        &ctx.device,
        &ctx.queue,
        opts.mlp(),
        opts.batch.min(train.len()),
        &[&test, &train],
        &opts.init(0),
        opts.adamw(schedule),
    )
    .map_err(js_error)?;
    let batches = train.select(&opts.batch_indices(0));
    model
        .upload_batches(&batches.x, &batches.y)
        .map_err(js_error)?;
    let logged = logged_steps(opts.steps, opts.log_every);
    Ok(DemoRun {
        name,
        log: model.create_log_buffer(logged.len()),
        lr_log: model.create_lr_buffer(opts.steps),
        model,
        steps: opts.steps,
        next_step: 1,
        logged,
        next_log: 0,
    })
}

#[wasm_bindgen]
impl DemoRun {
    /// The schedule's name.
    #[wasm_bindgen(getter)]
    pub fn name(&self) -> String {
        self.name.clone()
    }

    /// Steps trained (submitted) so far.
    #[wasm_bindgen(getter)]
    pub fn done(&self) -> u32 {
        self.next_step - 1
    }

    /// Records and submits up to `n` more steps (with the evaluations of the logged ones);
    /// returns the steps trained so far. Does not wait for the device.
    pub fn advance(&mut self, n: u32) -> Result<u32, JsValue> {
        let end = self.next_step.saturating_add(n.max(1) - 1).min(self.steps);
        if self.next_step > end {
            return Ok(self.done());
        }
        let record = self.model.log_record_bytes();
        let mut encoder = self.model.encoder();
        for s in self.next_step..=end {
            self.model
                .encode_train_step(&mut encoder, s - 1)
                .map_err(js_error)?;
            self.model
                .encode_lr(&mut encoder, &self.lr_log, s - 1)
                .map_err(js_error)?;
            if self.logged.get(self.next_log) == Some(&s) {
                self.model.encode_eval(&mut encoder, 0);
                self.model.encode_eval(&mut encoder, 1);
                self.model
                    .encode_log(&mut encoder, &self.log, self.next_log as u64 * record)
                    .map_err(js_error)?;
                self.next_log += 1;
            }
        }
        self.model.submit(encoder);
        self.next_step = end + 1;
        Ok(self.done())
    }

    /// Reads back what is trained so far (a promise of JSON): `points`, one per logged step
    /// (step, lr, batch_loss, train_loss, train_accuracy, test_loss, test_accuracy, as the
    /// native demo's CSV), and `lr`, the lr the device used at every step.
    pub fn read(&self) -> js_sys::Promise {
        let model_log = (self.log.clone(), self.lr_log.clone());
        let (logged, records, steps) = (
            self.logged[..self.next_log].to_vec(),
            self.next_log as u64,
            u64::from(self.done()),
        );
        let record = self.model.log_record_bytes();
        // The future owns its handles: the run stays usable while the read is pending.
        let (device, queue) = self.model.device();
        let (device, queue) = (device.clone(), queue.clone());
        let read = move |buffer: wgpu::Buffer, bytes: u64| {
            let (device, queue) = (device.clone(), queue.clone());
            async move {
                let words = read_buffer_async(&device, &queue, &buffer, 0, bytes).await?;
                Ok::<Vec<f32>, wgpu_adamw::Error>(bytemuck::cast_slice(&words).to_vec())
            }
        };
        wasm_bindgen_futures::future_to_promise(async move {
            let (log, lr_log) = model_log;
            let words = (record / 4) as usize;
            let log_words = if records > 0 {
                read(log, records * record).await.map_err(js_error)?
            } else {
                Vec::new()
            };
            let lr_words = if steps > 0 {
                read(lr_log, steps * LR_RECORD_BYTES)
                    .await
                    .map_err(js_error)?
            } else {
                Vec::new()
            };
            let points: Vec<serde_json::Value> = logged
                .iter()
                .zip(log_words.chunks(words))
                .map(|(&step, r)| {
                    serde_json::json!({
                        "step": step, "lr": r[12], "batch_loss": r[0],
                        "test_loss": r[4], "test_accuracy": r[5],
                        "train_loss": r[8], "train_accuracy": r[9],
                    })
                })
                .collect();
            let lr: Vec<f32> = lr_words
                .chunks(LR_RECORD_BYTES as usize / 4)
                .map(|r| r[0])
                .collect();
            Ok(JsValue::from_str(
                &serde_json::json!({ "points": points, "lr": lr }).to_string(),
            ))
        })
    }
}
