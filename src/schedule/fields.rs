//! Strict reading of a `schedule` JSON object: every field named, typed and used once.

use super::{PerGroup, Schedule};
use crate::error::{Error, Result};
use serde_json::{Map, Value};

/// The fields of one `schedule` object, read one by one; [`Fields::finish`] refuses the
/// ones no kind asked for.
pub(crate) struct Fields<'a> {
    kind: &'a str,
    obj: &'a Map<String, Value>,
    used: Vec<&'a str>,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(kind: &'a str, obj: &'a Map<String, Value>) -> Self {
        Self {
            kind,
            obj,
            used: vec!["kind"],
        }
    }

    fn err(&self, key: &str, what: impl std::fmt::Display) -> Error {
        Error::InvalidJson(format!("schedule `{}`: `{key}` {what}", self.kind))
    }

    fn get(&mut self, key: &'a str) -> Result<&'a Value> {
        self.used.push(key);
        self.obj.get(key).ok_or_else(|| self.err(key, "is missing"))
    }

    fn get_opt(&mut self, key: &'a str) -> Option<&'a Value> {
        self.used.push(key);
        self.obj.get(key)
    }

    /// An integer in `0..2^32` (`3.0` is not an integer).
    pub(crate) fn int(&mut self, key: &'a str) -> Result<u32> {
        let v = self.get(key)?;
        self.as_int(key, v)
    }

    fn as_int(&self, key: &str, v: &Value) -> Result<u32> {
        v.as_u64()
            .filter(|_| !v.is_f64())
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| self.err(key, format!("must be an integer in 0..2^32, got {v}")))
    }

    /// An integer field that may be absent (the old kinds' optional fields).
    pub(crate) fn int_or(&mut self, key: &'a str, default: u32) -> Result<u32> {
        match self.get_opt(key) {
            None => Ok(default),
            Some(v) => self.as_int(key, v),
        }
    }

    /// An integer or `null`.
    pub(crate) fn int_or_null(&mut self, key: &'a str) -> Result<Option<u32>> {
        let v = self.get(key)?;
        if v.is_null() {
            return Ok(None);
        }
        self.as_int(key, v).map(Some)
    }

    /// A number (an integer is accepted).
    pub(crate) fn num(&mut self, key: &'a str) -> Result<f64> {
        let v = self.get(key)?;
        v.as_f64()
            .ok_or_else(|| self.err(key, format!("must be a number, got {v}")))
    }

    /// A number that may be absent.
    pub(crate) fn num_or(&mut self, key: &'a str, default: f64) -> Result<f64> {
        match self.get_opt(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.err(key, format!("must be a number, got {v}"))),
        }
    }

    /// A boolean.
    pub(crate) fn boolean(&mut self, key: &'a str) -> Result<bool> {
        let v = self.get(key)?;
        v.as_bool()
            .ok_or_else(|| self.err(key, format!("must be true or false, got {v}")))
    }

    /// One of `names`: its index.
    pub(crate) fn choice(&mut self, key: &'a str, names: &[&str]) -> Result<u32> {
        let v = self.get(key)?;
        v.as_str()
            .and_then(|s| names.iter().position(|n| *n == s))
            .map(|i| i as u32)
            .ok_or_else(|| self.err(key, format!("must be one of {names:?}, got {v}")))
    }

    /// A number for every group, or a list with one number per group.
    pub(crate) fn per_group(&mut self, key: &'a str) -> Result<PerGroup> {
        let v = self.get(key)?;
        if let Some(x) = v.as_f64() {
            return Ok(PerGroup::All(x));
        }
        let list = v
            .as_array()
            .ok_or_else(|| self.err(key, format!("must be a number or a list, got {v}")))?;
        let xs = list
            .iter()
            .map(|x| {
                x.as_f64()
                    .ok_or_else(|| self.err(key, format!("must hold numbers, got {x}")))
            })
            .collect::<Result<Vec<f64>>>()?;
        if xs.is_empty() {
            return Err(self.err(key, "must not be an empty list"));
        }
        Ok(PerGroup::Each(xs))
    }

    /// A list of integers.
    pub(crate) fn ints(&mut self, key: &'a str) -> Result<Vec<u32>> {
        let v = self.get(key)?;
        let list = v
            .as_array()
            .ok_or_else(|| self.err(key, format!("must be a list of integers, got {v}")))?;
        list.iter().map(|x| self.as_int(key, x)).collect()
    }

    /// A list of schedule objects.
    pub(crate) fn schedules(&mut self, key: &'a str) -> Result<Vec<Schedule>> {
        let v = self.get(key)?;
        let list = v
            .as_array()
            .ok_or_else(|| self.err(key, format!("must be a list of schedules, got {v}")))?;
        list.iter().map(Schedule::from_json_value).collect()
    }

    /// Refuses fields that no one read.
    pub(crate) fn finish(self) -> Result<()> {
        for key in self.obj.keys() {
            if !self.used.contains(&key.as_str()) {
                return Err(Error::InvalidJson(format!(
                    "schedule `{}`: unknown field `{key}`",
                    self.kind
                )));
            }
        }
        Ok(())
    }
}
