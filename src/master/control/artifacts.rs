//! Reading a build's artifact, for every front end alike (web download, `ssh master fetch`):
//! which build, which recorded file, and where its bytes are (`master::artifacts`).

use std::sync::Arc;

use super::{Control, ControlError};
use crate::master::artifacts::{self, Located};
use crate::master::store::{ArtifactRow, BuildRef, SharedStore};

/// An artifact found, ready to be read.
pub struct ArtifactDownload {
    pub row: ArtifactRow,
    located: Located,
    store: SharedStore,
}

impl ArtifactDownload {
    /// Bytes `start..end`, a chunk at a time.
    pub fn read(
        self,
        start: u64,
        end: u64,
    ) -> impl futures_util::Stream<Item = std::io::Result<Vec<u8>>> + Send {
        artifacts::read_range(self.store, self.row, self.located, start, end)
    }
}

impl Control {
    /// Artifact `path` of build `number` of `builder`. Who may read it is who may read the
    /// build's logs (the front end's own rule: a session on a private web, a login over SSH).
    pub async fn artifact(
        &self,
        builder: &str,
        number: i64,
        path: &str,
    ) -> Result<ArtifactDownload, ControlError> {
        let detail = self
            .store
            .build(BuildRef::Number {
                builder: builder.to_string(),
                number,
            })
            .await?
            .ok_or_else(|| ControlError::NoSuchBuild {
                builder: builder.to_string(),
                number,
            })?;
        let master_dir = self.config().master_dir.clone();
        let found = artifacts::locate(
            &self.store,
            &master_dir,
            builder,
            number,
            detail.build.id,
            path,
        )
        .await?;
        let no_artifact = || ControlError::NoSuchArtifact {
            builder: builder.to_string(),
            number,
            path: path.to_string(),
        };
        match found {
            Some((_, Located::Gone)) | None => Err(no_artifact()),
            Some((row, located)) => Ok(ArtifactDownload {
                row,
                located,
                store: Arc::clone(&self.store),
            }),
        }
    }
}
