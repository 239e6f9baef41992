//! The story panel's worker: generates text from a checkpoint in a background thread, so the
//! dashboard keeps redrawing while a model loads and samples.
//!
//! The generation function is injected ([`StoryFn`]: checkpoint path → story), which keeps the
//! dashboard independent of the model code and lets tests pass a fake. Requests queue on a
//! channel; when several are waiting, only the newest is served (an older checkpoint's story is
//! of no interest once a newer one exists). A panic inside the function is caught and shown as
//! an error.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Checkpoint path → generated story.
pub type StoryFn = Box<dyn Fn(&Path) -> anyhow::Result<String> + Send + Sync>;

/// What the story panel shows.
#[derive(Clone, Debug, PartialEq)]
pub enum StoryState {
    /// Nothing requested yet.
    Idle,
    Generating {
        ckpt: PathBuf,
        since: Instant,
    },
    Ready {
        ckpt: PathBuf,
        text: String,
        took: Duration,
    },
    Failed {
        ckpt: PathBuf,
        error: String,
    },
}

struct Done {
    ckpt: PathBuf,
    result: Result<String, String>,
    took: Duration,
}

pub struct StoryWorker {
    tx: Option<Sender<PathBuf>>,
    rx: Receiver<Done>,
    pub state: StoryState,
    /// The checkpoint of the newest request.
    pub requested: Option<PathBuf>,
}

impl StoryWorker {
    pub fn new(generate: StoryFn) -> StoryWorker {
        let generate: Arc<StoryFn> = Arc::new(generate);
        let (req_tx, req_rx) = channel::<PathBuf>();
        let (done_tx, done_rx) = channel::<Done>();
        std::thread::Builder::new()
            .name("story".into())
            .spawn(move || {
                while let Ok(mut ckpt) = req_rx.recv() {
                    // Serve only the newest of the waiting requests.
                    loop {
                        match req_rx.try_recv() {
                            Ok(newer) => ckpt = newer,
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Disconnected) => return,
                        }
                    }
                    let t = Instant::now();
                    let result = match catch_unwind(AssertUnwindSafe(|| generate(&ckpt))) {
                        Ok(Ok(s)) => Ok(s),
                        Ok(Err(e)) => Err(format!("{e:#}")),
                        Err(p) => Err(format!(
                            "story generation panicked: {}",
                            p.downcast_ref::<&str>()
                                .map(|s| s.to_string())
                                .or_else(|| p.downcast_ref::<String>().cloned())
                                .unwrap_or_default()
                        )),
                    };
                    let done = Done {
                        ckpt,
                        result,
                        took: t.elapsed(),
                    };
                    if done_tx.send(done).is_err() {
                        return;
                    }
                }
            })
            .expect("spawning the story thread");
        StoryWorker {
            tx: Some(req_tx),
            rx: done_rx,
            state: StoryState::Idle,
            requested: None,
        }
    }

    /// Asks for a story from `ckpt`.
    pub fn request(&mut self, ckpt: &Path) {
        if let Some(tx) = &self.tx {
            if tx.send(ckpt.to_path_buf()).is_ok() {
                self.requested = Some(ckpt.to_path_buf());
                self.state = StoryState::Generating {
                    ckpt: ckpt.to_path_buf(),
                    since: Instant::now(),
                };
            }
        }
    }

    /// Takes finished results; returns true when the state changed.
    pub fn poll(&mut self) -> bool {
        let mut changed = false;
        while let Ok(d) = self.rx.try_recv() {
            // A result for an older request while a newer one is pending is not shown.
            if self.requested.as_ref() != Some(&d.ckpt) && self.requested.is_some() {
                continue;
            }
            self.state = match d.result {
                Ok(text) => StoryState::Ready {
                    ckpt: d.ckpt,
                    text,
                    took: d.took,
                },
                Err(error) => StoryState::Failed {
                    ckpt: d.ckpt,
                    error,
                },
            };
            changed = true;
        }
        changed
    }

    pub fn busy(&self) -> bool {
        matches!(self.state, StoryState::Generating { .. })
    }
}

impl Drop for StoryWorker {
    fn drop(&mut self) {
        // Closing the channel ends the thread after its current generation; it is not joined,
        // so quitting never waits for a slow model.
        self.tx.take();
    }
}
