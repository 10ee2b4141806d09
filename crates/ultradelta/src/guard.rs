//! Outputs never overwrite inputs: an output path that is, contains or lies inside one of a command's inputs is
//! refused before anything is written, whatever `overwrite` says. Paths are compared resolved (symlinks followed,
//! `..` removed) and existing files by identity (device and inode), so symlinks and hard links count.

use std::path::{Component, Path, PathBuf};

use ultradelta_io::Checkpoint;

use crate::{Error, Result};

/// One input of a command: a path and what it is, for the message.
#[derive(Clone, Debug)]
pub struct Input {
    /// The path (a file or a folder).
    pub path: PathBuf,
    /// What it is: `base checkpoint`, `fine-tuned checkpoint`, `archive`.
    pub role: &'static str,
}

impl Input {
    /// Every path a checkpoint reads: the path it was opened from, its weight files and its index.
    pub fn checkpoint(ck: &Checkpoint, role: &'static str) -> Vec<Input> {
        let mut v = vec![Input {
            path: ck.path().to_path_buf(),
            role,
        }];
        for f in ck.weight_files() {
            v.push(Input {
                path: f.clone(),
                role,
            });
        }
        if let Some(i) = ck.index_file() {
            v.push(Input {
                path: i.to_path_buf(),
                role,
            });
        }
        v
    }

    /// A single file or folder input.
    pub fn path(path: &Path, role: &'static str) -> Input {
        Input {
            path: path.to_path_buf(),
            role,
        }
    }
}

/// `p` made absolute with symlinks resolved as far as it exists; the components that do not exist yet are
/// appended (`.` dropped, `..` applied lexically).
pub fn resolve(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    let mut existing = abs.clone();
    let mut rest: Vec<std::ffi::OsString> = Vec::new();
    loop {
        if let Ok(c) = existing.canonicalize() {
            let mut out = c;
            for name in rest.iter().rev() {
                if name == ".." {
                    out.pop();
                } else if name != "." {
                    out.push(name);
                }
            }
            return out;
        }
        match (
            existing.file_name().map(|n| n.to_os_string()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => {
                // `..` or `.` at the end, or nothing exists: a lexical normalisation.
                let mut out = PathBuf::new();
                for c in abs.components() {
                    match c {
                        Component::ParentDir => {
                            out.pop();
                        }
                        Component::CurDir => {}
                        other => out.push(other),
                    }
                }
                return out;
            }
        }
    }
}

#[cfg(unix)]
fn identity(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn identity(_p: &Path) -> Option<(u64, u64)> {
    None
}

/// Refuses an `output` that is, contains or lies inside one of `inputs` ([`Error::OutputIsInput`]).
///
/// # Errors
/// [`Error::OutputIsInput`] naming the output, the input and how they collide.
pub fn check_output(output: &Path, inputs: &[Input]) -> Result<()> {
    let out = resolve(output);
    let out_id = identity(output);
    for input in inputs {
        let inp = resolve(&input.path);
        let relation = if out == inp {
            Some("is")
        } else if out_id.is_some() && out_id == identity(&input.path) {
            Some("is the same file as")
        } else if inp.starts_with(&out) {
            Some("contains")
        } else if out.starts_with(&inp) {
            Some("lies inside")
        } else {
            None
        };
        if let Some(relation) = relation {
            return Err(Error::OutputIsInput {
                output: output.to_path_buf(),
                input: input.path.clone(),
                role: input.role,
                relation,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_containing_inside_symlinks_and_hard_links_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("base")).unwrap();
        std::fs::write(d.join("base/model.safetensors"), b"x").unwrap();
        std::fs::write(d.join("a.udelta"), b"x").unwrap();
        let inputs = [
            Input::path(&d.join("base"), "base checkpoint"),
            Input::path(&d.join("base/model.safetensors"), "base checkpoint"),
            Input::path(&d.join("a.udelta"), "archive"),
        ];
        let refused = |p: &Path| check_output(p, &inputs).is_err();
        assert!(refused(&d.join("base")));
        assert!(refused(&d.join("base/./")));
        assert!(refused(&d.join("x/../base")));
        assert!(refused(d), "contains the inputs");
        assert!(
            refused(&d.join("base/new-folder")),
            "inside the base folder"
        );
        assert!(refused(&d.join("a.udelta")));
        std::os::unix::fs::symlink(d.join("a.udelta"), d.join("link.udelta")).unwrap();
        assert!(refused(&d.join("link.udelta")), "a symlink to the archive");
        std::fs::hard_link(d.join("a.udelta"), d.join("hard.udelta")).unwrap();
        assert!(
            refused(&d.join("hard.udelta")),
            "a hard link to the archive"
        );
        let err = check_output(&d.join("hard.udelta"), &inputs)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is the same file as"), "{err}");
        assert!(!refused(&d.join("out")));
        assert!(!refused(&d.join("b.udelta")));
        assert!(
            !refused(&d.join("base-rebuilt")),
            "a sibling with a common prefix"
        );
    }
}
