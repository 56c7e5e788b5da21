//! The planner: pure code that maps the files of a files job onto parts (upload jobs).
//!
//! Small files are packed together into one part until the part size or the file count limit
//! would be exceeded; a file of at least one part size is split into whole parts plus a remainder
//! part of its own. Empty files need no upload. The plan is a plain value: it is stored before the
//! files job is acknowledged, and the tests check its boundaries without any I/O.

use cairn_core::{Error, FilePath, Result};
use serde::{Deserialize, Serialize};

/// Planner limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanLimits {
    /// Target part size in bytes (32 MiB by default, as the reference's observed parts).
    pub part_size: u64,
    /// Most file segments one upload job may hold, so tiny files still spread over jobs.
    pub max_segments: usize,
    /// Most upload jobs one plan may have; a bigger request is `too_large` (checked before
    /// the jobs are built, so a huge declared size cannot exhaust memory).
    pub max_jobs: usize,
}

impl Default for PlanLimits {
    fn default() -> Self {
        PlanLimits {
            part_size: 32 << 20,
            max_segments: 1024,
            max_jobs: 65_536,
        }
    }
}

/// One file to plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanFile {
    pub path: FilePath,
    pub size: u64,
}

/// A slice `[off, off+len)` of a file, uploaded as part of one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub path: FilePath,
    pub file_size: u64,
    pub off: u64,
    pub len: u64,
}

/// One planned upload job: its segments in stream order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlannedJob {
    pub segments: Vec<Segment>,
}

impl PlannedJob {
    pub fn size(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }
}

/// Plans `files` onto upload jobs.
pub fn plan(files: &[PlanFile], limits: PlanLimits) -> Result<Vec<PlannedJob>> {
    if limits.part_size == 0 || limits.max_segments == 0 {
        return Err(Error::invalid(
            "part size and segment limit must be positive",
        ));
    }
    let mut jobs = Vec::new();
    let mut small = PlannedJob::default();
    for f in files {
        if f.size >= limits.part_size {
            let parts = f.size.div_ceil(limits.part_size);
            if (jobs.len() as u64).saturating_add(parts) > limits.max_jobs as u64 {
                return Err(too_many(limits));
            }
            split_large(f, limits.part_size, &mut jobs);
        } else if f.size > 0 {
            let full = small.segments.len() >= limits.max_segments;
            if full || small.size() + f.size > limits.part_size {
                jobs.push(std::mem::take(&mut small));
                if jobs.len() >= limits.max_jobs {
                    return Err(too_many(limits));
                }
            }
            small.segments.push(Segment {
                path: f.path.clone(),
                file_size: f.size,
                off: 0,
                len: f.size,
            });
        }
    }
    if !small.segments.is_empty() {
        jobs.push(small);
    }
    // The checks above bound the work as the plan grows; this one also counts a small-files
    // job still open when large files filled the rest.
    if jobs.len() > limits.max_jobs {
        return Err(too_many(limits));
    }
    Ok(jobs)
}

fn too_many(limits: PlanLimits) -> Error {
    Error::too_large(format!(
        "the files job needs more than {} upload jobs",
        limits.max_jobs
    ))
}

fn split_large(f: &PlanFile, part_size: u64, jobs: &mut Vec<PlannedJob>) {
    let mut off = 0;
    while off < f.size {
        let len = part_size.min(f.size - off);
        let seg = Segment {
            path: f.path.clone(),
            file_size: f.size,
            off,
            len,
        };
        jobs.push(PlannedJob {
            segments: vec![seg],
        });
        off += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = 32 << 20;

    fn file(name: &str, size: u64) -> PlanFile {
        PlanFile {
            path: FilePath::parse(name).unwrap(),
            size,
        }
    }

    /// Each job as its `(off, len)` segments.
    type Shape = Vec<Vec<(u64, u64)>>;

    fn shape(jobs: &[PlannedJob]) -> Shape {
        jobs.iter()
            .map(|j| j.segments.iter().map(|s| (s.off, s.len)).collect())
            .collect()
    }

    /// Every byte of every file is planned exactly once, in order, and no job exceeds the limits.
    fn check_cover(files: &[PlanFile], jobs: &[PlannedJob], limits: PlanLimits) {
        for j in jobs {
            assert!(j.size() <= limits.part_size, "job over part size");
            assert!(j.segments.len() <= limits.max_segments);
            assert!(j.segments.iter().all(|s| s.len > 0));
        }
        for f in files {
            let mut next = 0;
            for s in jobs
                .iter()
                .flat_map(|j| &j.segments)
                .filter(|s| s.path == f.path)
            {
                assert_eq!(s.off, next, "{}: segments contiguous and ordered", f.path);
                assert_eq!(s.file_size, f.size);
                next += s.len;
            }
            assert_eq!(next, f.size, "{}: fully covered", f.path);
        }
    }

    #[test]
    fn boundaries_of_one_file() {
        let l = PlanLimits::default();
        let cases: &[(u64, Shape)] = &[
            (0, vec![]),
            (1, vec![vec![(0, 1)]]),
            (P - 1, vec![vec![(0, P - 1)]]),
            (P, vec![vec![(0, P)]]),
            (P + 1, vec![vec![(0, P)], vec![(P, 1)]]),
            (2 * P, vec![vec![(0, P)], vec![(P, P)]]),
        ];
        for (size, want) in cases {
            let files = [file("f", *size)];
            let jobs = plan(&files, l).unwrap();
            assert_eq!(&shape(&jobs), want, "size {size}");
            check_cover(&files, &jobs, l);
        }
    }

    #[test]
    fn ten_thousand_tiny_files_pack_together_within_limits() {
        let l = PlanLimits::default();
        let files: Vec<_> = (0..10_000)
            .map(|i| file(&format!("d/{i}.txt"), 100))
            .collect();
        let jobs = plan(&files, l).unwrap();
        assert_eq!(jobs.len(), 10, "9 jobs of 1024 segments and one of 784");
        assert_eq!(jobs[9].segments.len(), 10_000 - 9 * 1024);
        check_cover(&files, &jobs, l);
    }

    #[test]
    fn ten_gib_file_is_planned_not_written() {
        let l = PlanLimits::default();
        let files = [file("big.bin", 10 << 30)];
        let jobs = plan(&files, l).unwrap();
        assert_eq!(jobs.len(), 320);
        check_cover(&files, &jobs, l);
    }

    #[test]
    fn mixed_sizes_pack_small_and_split_large() {
        let l = PlanLimits {
            part_size: 100,
            max_segments: 3,
            max_jobs: 100,
        };
        let files = [
            file("a", 40),
            file("empty", 0),
            file("b", 60),
            file("c", 1),
            file("big", 250),
            file("d", 99),
            file("e", 1),
            file("f", 1),
            file("g", 1),
        ];
        let jobs = plan(&files, l).unwrap();
        assert_eq!(
            shape(&jobs),
            vec![
                vec![(0, 40), (0, 60)],
                vec![(0, 100)],
                vec![(100, 100)],
                vec![(200, 50)],
                vec![(0, 1), (0, 99)],
                vec![(0, 1), (0, 1), (0, 1)],
            ]
        );
        check_cover(&files, &jobs, l);
    }

    #[test]
    fn a_huge_declared_size_is_refused_before_planning() {
        let files = [file("huge", 1 << 40)];
        let limits = PlanLimits {
            part_size: 1024,
            ..PlanLimits::default()
        };
        assert_eq!(
            plan(&files, limits).unwrap_err().kind,
            cairn_core::ErrorKind::TooLarge
        );
        let tiny: Vec<_> = (0..10).map(|i| file(&format!("{i}"), 60)).collect();
        let one_each = PlanLimits {
            part_size: 100,
            max_segments: 10,
            max_jobs: 3,
        };
        assert!(
            plan(&tiny, one_each).is_err(),
            "10 files of 60 bytes need 10 jobs of 100"
        );
        // A small file's job still open when large files take every other job.
        let mixed = [file("small", 1), file("large", 200)];
        let two = PlanLimits {
            part_size: 100,
            max_segments: 10,
            max_jobs: 2,
        };
        assert!(plan(&mixed, two).is_err(), "1 + 2 jobs over a limit of 2");
        let three = PlanLimits { max_jobs: 3, ..two };
        assert_eq!(plan(&mixed, three).unwrap().len(), 3);
    }

    #[test]
    fn zero_limits_are_rejected() {
        assert!(plan(
            &[],
            PlanLimits {
                part_size: 0,
                max_segments: 1,
                max_jobs: 1
            }
        )
        .is_err());
    }
}
