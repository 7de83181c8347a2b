//! Parallel map over a slice on scoped std threads (no thread-pool dependency in the applier).
//! Used where the work is independent per file and read-only: hashing the base before anything
//! is written, hashing staged files to verify them. Results keep the input order, so reports and
//! errors are the same as a sequential run's.

use std::sync::atomic::{AtomicUsize, Ordering};

/// At most this many threads, however many cores: hashing is soon bound by the disk.
const MAX_THREADS: usize = 8;

/// `f` applied to every item, in item order, on up to [`MAX_THREADS`] threads (one when there is
/// one core or one item). A panic in `f` propagates to the caller, as it would sequentially.
pub fn map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    map_with(items, || (), |_, x| f(x))
}

/// [`map`] where each thread first makes its own state with `init` (a cache of directory
/// handles, say) and `f` gets it with every item that thread takes.
pub fn map_with<T: Sync, S, R: Send>(
    items: &[T],
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, &T) -> R + Sync,
) -> Vec<R> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = cores.min(MAX_THREADS).min(items.len());
    if threads <= 1 {
        let mut s = init();
        return items.iter().map(|x| f(&mut s, x)).collect();
    }
    // Threads claim runs of neighbouring items (paths in order share directories, so a thread's
    // cache of directory handles serves the whole run), small enough to keep the threads busy.
    let chunk = (items.len() / (threads * 8)).clamp(1, 64);
    let next = AtomicUsize::new(0);
    let mut done: Vec<(usize, R)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    let mut state = init();
                    loop {
                        let start = next.fetch_add(chunk, Ordering::Relaxed);
                        if start >= items.len() {
                            break;
                        }
                        for (i, item) in items.iter().enumerate().skip(start).take(chunk) {
                            out.push((i, f(&mut state, item)));
                        }
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| match w.join() {
                Ok(v) => v,
                Err(p) => std::panic::resume_unwind(p),
            })
            .collect()
    });
    done.sort_unstable_by_key(|d| d.0);
    done.into_iter().map(|d| d.1).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_covers_every_item() {
        let items: Vec<u64> = (0..1000).collect();
        let got = map(&items, |x| x * 3);
        assert_eq!(got, items.iter().map(|x| x * 3).collect::<Vec<_>>());
        assert!(map(&[] as &[u64], |x| *x).is_empty());
        assert_eq!(map(&[7u64], |x| x + 1), vec![8]);
    }
}
