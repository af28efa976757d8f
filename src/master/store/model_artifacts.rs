//! What the store keeps of artifacts: each file's metadata, and (for a shared store) its bytes
//! in chunks of [`ARTIFACT_CHUNK`], so every master of a cluster can serve it.

/// The size of every stored chunk of an artifact but the last: chunk `seq` holds bytes
/// `seq * ARTIFACT_CHUNK ..`, so a byte range maps onto chunks without an index.
pub const ARTIFACT_CHUNK: u64 = 1024 * 1024;

/// A file a step kept, as recorded once it arrived whole and its checksum matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewArtifact {
    pub build_id: i64,
    /// The step (number) that produced it.
    pub step: i64,
    /// Relative to the builder's work tree, `/`-separated.
    pub path: String,
    pub size: u64,
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ArtifactRow {
    pub build_id: i64,
    pub step: i64,
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub created_at: f64,
    /// Whether the store holds the bytes too (a shared store), or only this master's disk.
    pub in_store: bool,
}

/// What retention removes of an old build, each on its own schedule (`[retention]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrunePart {
    /// Its kept files (records, stored chunks; the master removes its own copies).
    Artifacts,
    /// Its step logs (stored chunks; the master removes its own files).
    Logs,
}

impl PrunePart {
    pub fn as_str(self) -> &'static str {
        match self {
            PrunePart::Artifacts => "artifacts",
            PrunePart::Logs => "logs",
        }
    }
}
