//! The registry: every job definition linked into this binary, by stored name.

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::job::{JobDescriptor, Registration};
use crate::name;

/// A problem with the set of job definitions linked into this binary.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// Two definitions store the same job name.
    #[error(
        "two jobs are named {name:?}: one defined at {first}, the other at {second}; \
         give one of them another `name = \"…\"`"
    )]
    Duplicate {
        /// The name both use.
        name: &'static str,
        /// Where one definition is (`file:line`); the two places are sorted.
        first: String,
        /// Where the other one is.
        second: String,
    },
    /// A definition's name or queue breaks the naming rule.
    #[error("the job defined at {at} is invalid: {why}")]
    Invalid {
        /// Where the definition is (`file:line`).
        at: String,
        /// What is wrong with it.
        why: String,
    },
}

/// Why [`Registry::render_args`] could not show a job's arguments.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    /// This binary does not define the job, so it does not know its argument types.
    #[error("this program does not define the job, so its argument types are unknown here")]
    UnknownJob,
    /// The bytes are not the job's arguments as this binary defines them.
    #[error("the stored arguments do not decode as this program's definition of the job: {0}")]
    Decode(crate::codec::DecodeError),
}

/// The job definitions linked into this binary, by stored name. Built once, on first use.
#[derive(Debug)]
pub struct Registry {
    by_name: HashMap<&'static str, &'static JobDescriptor>,
}

impl Registry {
    /// The registry of this binary (built from every `#[define_job]` linked in), or the first
    /// problem found with it.
    pub fn global() -> Result<&'static Registry, RegistryError> {
        static GLOBAL: OnceLock<Result<Registry, RegistryError>> = OnceLock::new();
        GLOBAL
            .get_or_init(|| Registry::build(inventory::iter::<Registration>().map(|r| r.0)))
            .as_ref()
            .map_err(Clone::clone)
    }

    fn build(descriptors: impl Iterator<Item = &'static JobDescriptor>) -> Result<Registry, RegistryError> {
        let mut by_name: HashMap<&'static str, &'static JobDescriptor> = HashMap::new();
        for d in descriptors {
            let at = || format!("{}:{}", d.file, d.line);
            if let Err(e) = name::check_job_name(d.name).and_then(|()| name::check_queue(d.queue)) {
                return Err(RegistryError::Invalid { at: at(), why: e.to_string() });
            }
            if let Some(first) = by_name.insert(d.name, d) {
                // Report in a stable order whatever order the linker chose.
                let mut places = [format!("{}:{}", first.file, first.line), at()];
                places.sort();
                let [first, second] = places;
                return Err(RegistryError::Duplicate { name: d.name, first, second });
            }
        }
        Ok(Registry { by_name })
    }

    /// The definition stored under `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&'static JobDescriptor> {
        self.by_name.get(name).copied()
    }

    /// The arguments of a stored job of this binary, decoded for display: `name: value`
    /// pairs separated by `, `, each value in its `Debug` form (`<no Debug>` for a type
    /// without one); `""` for a job without arguments. Meant for operators' tools such as the
    /// admin page: the text is for people, not for parsing.
    ///
    /// Fails when this binary does not define the job, or the bytes do not decode as its
    /// arguments (e.g. they were stored by another version of it).
    pub fn render_args(&self, job: &str, args: &[u8]) -> Result<String, RenderError> {
        let descriptor = self.get(job).ok_or(RenderError::UnknownJob)?;
        (descriptor.render)(args).map_err(RenderError::Decode)
    }

    /// Every job definition of this binary.
    pub(crate) fn jobs(&self) -> impl Iterator<Item = &'static JobDescriptor> + '_ {
        self.by_name.values().copied()
    }

    /// The stored names of every job this binary can run.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.by_name.keys().copied()
    }

    /// How many jobs this binary can run.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether this binary defines no jobs at all.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobContext, JobFuture};

    fn never(_: &[u8], _: JobContext) -> Result<JobFuture, crate::codec::DecodeError> {
        unreachable!("not run in these tests")
    }

    fn render(bytes: &[u8]) -> Result<String, crate::codec::DecodeError> {
        Ok(format!("{} bytes", bytes.len()))
    }

    static A: JobDescriptor = JobDescriptor {
        name: "same",
        queue: "default",
        priority: 50,
        max_attempts: 20,
        timeout: None,
        unique: None,
        periodic: None,
        file: "src/a.rs",
        line: 1,
        run: never,
        render,
    };
    static B: JobDescriptor = JobDescriptor { file: "src/b.rs", line: 2, ..A };
    static BAD: JobDescriptor = JobDescriptor { name: "bad name", ..A };

    #[test]
    fn duplicate_names_name_both_definitions() {
        let err = Registry::build([&B, &A].into_iter()).unwrap_err();
        assert_eq!(
            err,
            RegistryError::Duplicate {
                name: "same",
                first: "src/a.rs:1".into(),
                second: "src/b.rs:2".into()
            }
        );
        assert!(err.to_string().contains("src/a.rs:1") && err.to_string().contains("src/b.rs:2"));
    }

    #[test]
    fn arguments_render_through_the_definition_of_their_job() {
        let registry = Registry::build([&A].into_iter()).unwrap();
        assert_eq!(registry.render_args("same", &[1, 2, 3]).unwrap(), "3 bytes");
        assert_eq!(registry.render_args("other", &[]), Err(RenderError::UnknownJob));
    }

    #[test]
    fn invalid_names_are_reported_with_their_place() {
        let err = Registry::build([&BAD].into_iter()).unwrap_err();
        assert!(matches!(err, RegistryError::Invalid { ref at, .. } if at == "src/a.rs:1"));
    }
}
