//! Live progress of a run on the terminal: a spinner with the state, step, tokens and cost,
//! and a line per plan and per finished step above it; a streaming run's model text is printed
//! as it arrives (the spinner steps aside meanwhile). Without a terminal (a pipe, CI) the
//! spinner is hidden and only the lines and the text are printed.

use std::io::Write;
use std::time::Duration;

use impresario::agents::{RunState, RunUpdate, RunUsage};
use indicatif::{ProgressBar, ProgressStyle};

/// The progress display of one run.
pub struct Progress {
    bar: ProgressBar,
    state: String,
    usage: RunUsage,
    /// The step whose model text is being printed, while it is (the spinner is cleared).
    streaming: Option<u32>,
}

fn spinner() -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

impl Progress {
    /// Starts the spinner.
    pub fn start() -> Self {
        let progress = Progress {
            bar: spinner(),
            state: "queued".into(),
            usage: RunUsage::default(),
            streaming: None,
        };
        progress.redraw();
        progress
    }

    /// Prints a line above the spinner (also when the spinner is hidden).
    pub fn line(&self, text: impl AsRef<str>) {
        self.bar.suspend(|| println!("{}", text.as_ref()));
    }

    /// Prints model text as it arrives: the spinner is cleared until the next other event.
    fn delta(&mut self, step: u32, text: &str) {
        if self.streaming != Some(step) {
            self.end_text();
            self.bar.finish_and_clear();
            print!("  model (step {step}): ");
            self.streaming = Some(step);
        }
        print!("{text}");
        let _ = std::io::stdout().flush();
    }

    /// Ends the model text being printed, if any, and brings the spinner back.
    fn end_text(&mut self) {
        if self.streaming.take().is_some() {
            println!();
            self.bar = spinner();
        }
    }

    /// Shows an event of the run.
    pub fn event(&mut self, event: &RunUpdate) {
        if let RunUpdate::Delta { step, text } = event {
            return self.delta(*step, text);
        }
        self.end_text();
        match event {
            RunUpdate::State(state) => {
                self.state = match state {
                    RunState::Running { step } => format!("step {step}"),
                    RunState::AwaitingApproval { step, tool } => {
                        format!("step {step} waits for approval of {tool}")
                    }
                    other => name(other),
                };
            }
            RunUpdate::Planned { revision, plan } => {
                let steps: Vec<String> = plan.steps.iter().map(|s| s.label()).collect();
                self.line(format!("  plan {revision}: {}", steps.join(", ")));
            }
            RunUpdate::StepFinished(record) => {
                let outcome = match &record.outcome {
                    Ok(output) => one_line(output),
                    Err(failure) => format!("failed: {failure}"),
                };
                self.line(format!(
                    "  step {} {}: {outcome}",
                    record.number,
                    record.step.label()
                ));
            }
            RunUpdate::Revised { revision, feedback } => {
                self.line(format!("  plan {revision} sent back: {feedback}"));
            }
            RunUpdate::Recalled { .. } | RunUpdate::Compacted(_) | RunUpdate::Delta { .. } => {}
        }
        self.redraw();
    }

    /// Shows what the run has spent so far.
    pub fn usage(&mut self, usage: RunUsage) {
        self.usage = usage;
        self.redraw();
    }

    /// Clears the spinner and prints the outcome; true if the run succeeded.
    pub fn finish(mut self, state: &RunState, usage: RunUsage) -> bool {
        self.end_text();
        self.bar.finish_and_clear();
        match state {
            RunState::Succeeded { answer } => println!("answer: {answer}"),
            RunState::Failed { reason, detail } => println!("failed ({reason}): {detail}"),
            RunState::Halted { reason, detail } => println!(
                "halted ({reason}){}",
                detail
                    .as_ref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            ),
            RunState::CeilingReached { ceiling } => println!("stopped at a ceiling: {ceiling}"),
            other => println!("ended: {}", name(other)),
        }
        println!("usage: {}", spent(&usage));
        matches!(state, RunState::Succeeded { .. })
    }

    fn redraw(&self) {
        self.bar
            .set_message(format!("{} · {}", self.state, spent(&self.usage)));
    }
}

/// `3 model calls, 2864 tokens, $0.002979`.
fn spent(usage: &RunUsage) -> String {
    format!(
        "{} model calls, {} tokens, ${:.6}",
        usage.model_calls,
        usage.tokens,
        usage.micro_usd as f64 / 1e6
    )
}

fn name(state: &RunState) -> String {
    let value = serde_json::to_value(state).unwrap_or_default();
    value["state"].as_str().unwrap_or("unknown").to_owned()
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
