//! What `try --wait` asks of a job besides its events: the end of the log of the step that
//! failed a build, and where the job stands in the history when events were missed.

use crate::master::control::{Control, ControlError};
use crate::master::logs::StepLog;
use crate::master::store::BuildRef;
use crate::proto::StreamKind;
use crate::status::{JobRecord, StepTail, TailStream};

impl Control {
    /// The last `lines` lines of each log stream of the step that failed build `number` of
    /// `builder`: the last step whose result is not good. None when no step failed or `lines`
    /// is 0.
    pub async fn failed_step_tail(
        &self,
        builder: &str,
        number: i64,
        lines: usize,
    ) -> Result<Option<StepTail>, ControlError> {
        if lines == 0 {
            return Ok(None);
        }
        let name = builder.to_string();
        let detail = self
            .store
            .build_detail(&BuildRef::Number {
                builder: name,
                number,
            })
            .await?;
        let Some((build_id, step)) = detail.and_then(|detail| {
            let build_id = detail.build.id;
            detail
                .steps
                .into_iter()
                .rev()
                .find(|step| step.result.is_some_and(|result| !result.is_good()))
                .map(|step| (build_id, step))
        }) else {
            return Ok(None);
        };
        let source = self.logs();
        let mut streams = Vec::new();
        for stream in [StreamKind::Stdout, StreamKind::Stderr, StreamKind::Info] {
            let log = StepLog {
                builder: builder.to_string(),
                number,
                build_id,
                step: step.number,
                step_name: step.name.clone(),
                stream,
            };
            match source.tail(&log, lines).await {
                Ok(found) => streams.extend(found.map(|(lines, cut)| TailStream {
                    stream: stream.file_extension().to_string(),
                    lines,
                    cut,
                })),
                Err(err) => {
                    tracing::warn!(
                        builder,
                        number,
                        step = step.number,
                        "cannot read a log's tail: {err}"
                    );
                }
            }
        }
        Ok(Some(StepTail {
            builder: builder.to_string(),
            number,
            step: step.number,
            name: step.name,
            result: step.result.unwrap_or(crate::status::BuildResult::Failure),
            summary: step.summary,
            streams,
            url: self.build_url(builder, number),
        }))
    }

    /// A try job as the history records it (after a follower missed events about it).
    pub async fn job_record(&self, job_name: &str) -> Result<JobRecord, ControlError> {
        let job_name = job_name.to_string();
        Ok(self.store.job_record(&job_name).await?)
    }
}
