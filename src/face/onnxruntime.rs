//! The ONNX Runtime CPU backend (feature `ort`): the same [`Embedder`]
//! contract as the tract backend, several times faster on CPUs.
//!
//! The runtime is a shared library opened at run time (`ort`'s
//! `load-dynamic`): nothing native is linked or downloaded at build time, and
//! a missing, corrupt or too-old library is an error value, never a crash.
//! One library is loaded per process, once; every session shares its
//! environment.
//!
//! The embedding model is read once and, where its batch dimension is fixed
//! at 1 (as the default model's is), rewritten in memory so that one run
//! embeds a whole batch: the input's first dimension becomes symbolic and a
//! trailing `Reshape` to `[1, -1]` becomes `Flatten(axis = 1)`, which is the
//! same operation at batch 1.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;
use prost::Message;
use tract_onnx::pb;

use super::align::FACE_SIZE;
use super::embed::{concat, probe_dim, rows, Embedder, Embedding, FaceInput};
use super::FaceError;

/// The ONNX Runtime library loaded into this process.
#[derive(Clone)]
pub struct OrtRuntime {
    env: Environment,
    library: PathBuf,
}

impl std::fmt::Debug for OrtRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtRuntime")
            .field("library", &self.library)
            .finish()
    }
}

/// The runtime once loaded; loading is once per process (the library stays
/// mapped, and ONNX Runtime allows one environment per process).
static RUNTIME: Mutex<Option<OrtRuntime>> = Mutex::new(None);

fn runtime_err(library: &Path, message: impl std::fmt::Display) -> FaceError {
    FaceError::Runtime {
        library: library.display().to_string(),
        message: message.to_string(),
    }
}

impl OrtRuntime {
    /// Loads ONNX Runtime from `library` (a `libonnxruntime.so`), or returns
    /// the runtime already loaded from that file. A missing file, a file that
    /// is not a shared library, a library without the ONNX Runtime API or one
    /// older than 1.30 is an error; so is asking for a second, different
    /// library in the same process.
    pub fn load(library: &Path) -> Result<Self, FaceError> {
        if !library.is_file() {
            return Err(runtime_err(library, "no such file (run scripts/fetch-assets.sh)"));
        }
        // An absolute path: `ort` would otherwise look beside the executable
        // first.
        let path = library.canonicalize().map_err(|e| runtime_err(library, e))?;
        let mut loaded = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rt) = loaded.as_ref() {
            if rt.library == path {
                return Ok(rt.clone());
            }
            return Err(runtime_err(
                library,
                format!(
                    "ONNX Runtime is already loaded from {} in this process (one library per process)",
                    rt.library.display()
                ),
            ));
        }
        check_shared_library(&path).map_err(|e| runtime_err(library, e))?;
        let env = catch_unwind(AssertUnwindSafe(|| -> Result<Environment, String> {
            let builder = ort::init_from(&path).map_err(|e| e.to_string())?;
            builder
                .with_name("facepool")
                .with_telemetry(false)
                .build()
                .map_err(|e| e.to_string())
        }))
        .map_err(|_| runtime_err(library, "loading the library panicked"))?
        .map_err(|e| runtime_err(library, e))?;
        let rt = Self { env, library: path };
        *loaded = Some(rt.clone());
        Ok(rt)
    }

    /// The library's absolute path.
    pub fn library(&self) -> &Path {
        &self.library
    }
}

/// Checks that an ELF shared library holds every byte its loadable segments
/// claim: the dynamic loader maps them without looking, so a truncated
/// library would crash the process (SIGBUS) instead of failing to load.
/// Other formats are left to the loader.
fn check_shared_library(path: &Path) -> Result<(), String> {
    use object::read::elf::{FileHeader, ProgramHeader};

    let data = std::fs::read(path).map_err(|e| e.to_string())?;
    if !data.starts_with(b"\x7fELF") {
        // Not ELF: the loader refuses it cleanly.
        return Ok(());
    }
    let bad = |e: object::Error| format!("failed to load: not a usable shared library ({e})");
    let header = object::elf::FileHeader64::<object::Endianness>::parse(&*data).map_err(bad)?;
    let endian = header.endian().map_err(bad)?;
    for ph in header.program_headers(endian, &*data).map_err(bad)? {
        let (offset, size) = ph.file_range(endian);
        if offset.saturating_add(size) > data.len() as u64 {
            return Err(format!(
                "failed to load: the library is truncated ({} bytes; a segment ends at byte {})",
                data.len(),
                offset.saturating_add(size)
            ));
        }
    }
    Ok(())
}

/// How an [`OrtModel`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrtOptions {
    /// Most faces per model run (larger batches are split).
    pub max_batch: usize,
    /// Intra-op threads of each session (the calling thread counts as one).
    pub intra_threads: usize,
    /// Whether idle intra-op threads spin waiting for work (faster hand-off,
    /// but they burn a core that other stages could use).
    pub spinning: bool,
}

impl Default for OrtOptions {
    fn default() -> Self {
        Self {
            max_batch: 32,
            intra_threads: 1,
            spinning: false,
        }
    }
}

/// The embedding model for ONNX Runtime: the (rewritten) model bytes and
/// the settings, shareable between inference threads, each of which makes
/// its own session with [`OrtModel::embedder`].
#[derive(Clone)]
pub struct OrtModel {
    runtime: OrtRuntime,
    bytes: Arc<[u8]>,
    path: PathBuf,
    options: OrtOptions,
    sizes: [usize; 1],
    dim: usize,
}

impl std::fmt::Debug for OrtModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtModel")
            .field("path", &self.path)
            .field("options", &self.options)
            .field("dim", &self.dim)
            .finish()
    }
}

/// Largest model file read (the default model is 4.9 MB).
const MAX_MODEL_BYTES: u64 = 1 << 30;

fn model_err(path: &Path, e: impl std::fmt::Display) -> FaceError {
    FaceError::Model(format!("{}: {e}", path.display()))
}

/// The bytes of the model file at `path`, refused before reading when
/// larger than [`MAX_MODEL_BYTES`].
fn read_model(path: &Path) -> Result<Vec<u8>, FaceError> {
    let size = std::fs::metadata(path)
        .map_err(|e| model_err(path, format!("{e} (run scripts/fetch-assets.sh)")))?
        .len();
    if size > MAX_MODEL_BYTES {
        return Err(model_err(
            path,
            format!("{size} bytes, more than {MAX_MODEL_BYTES}"),
        ));
    }
    std::fs::read(path).map_err(|e| model_err(path, e))
}

impl OrtModel {
    /// Reads the model at `path`, makes it batchable, and checks that it
    /// runs on `runtime` (one probe run, which also gives the embedding
    /// size).
    pub fn load(runtime: &OrtRuntime, path: &Path, options: OrtOptions) -> Result<Self, FaceError> {
        let raw = read_model(path)?;
        let bytes = batchable(&raw).map_err(|e| model_err(path, e))?;
        let options = OrtOptions {
            max_batch: options.max_batch.max(1),
            intra_threads: options.intra_threads.max(1),
            ..options
        };
        let mut m = Self {
            runtime: runtime.clone(),
            bytes: bytes.into(),
            path: path.to_path_buf(),
            options,
            sizes: [options.max_batch],
            dim: 0,
        };
        let mut e = m.embedder()?;
        m.dim = probe_dim(|f| e.run(f))?;
        Ok(m)
    }

    /// A session for one inference thread.
    pub fn embedder(&self) -> Result<OrtEmbedder, FaceError> {
        // Denormal activations are flushed to zero: 4-8 % faster on the
        // default model, embeddings unchanged to 1e-5.
        let (session, input) = session(
            &self.runtime,
            &self.path,
            &self.bytes,
            self.options.intra_threads,
            self.options.spinning,
            true,
        )?;
        Ok(OrtEmbedder {
            session,
            input,
            sizes: self.sizes,
            dim: self.dim,
            data: Vec::new(),
        })
    }

    /// Length of the embeddings.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The settings.
    pub fn options(&self) -> OrtOptions {
        self.options
    }

    /// The runtime it runs on.
    pub fn runtime(&self) -> &OrtRuntime {
        &self.runtime
    }
}

/// A small model of fixed input shape (the face detector, the landmark
/// model) for ONNX Runtime: its bytes, shareable between the preparation
/// workers, each of which makes its own session ([`OrtNet::session`]) and
/// runs it on its own thread (one intra-op thread: the caller's).
#[derive(Clone)]
pub struct OrtNet {
    runtime: OrtRuntime,
    bytes: Arc<[u8]>,
    path: PathBuf,
}

impl std::fmt::Debug for OrtNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtNet").field("path", &self.path).finish()
    }
}

impl OrtNet {
    /// Reads the model at `path` and checks that ONNX Runtime takes it (a
    /// session is made and dropped).
    pub fn load(runtime: &OrtRuntime, path: &Path) -> Result<Self, FaceError> {
        Self::with_bytes(runtime, path, read_model(path)?)
    }

    /// [`load`](Self::load), the model's batch dimension made free (as the
    /// embedder's is), so that one run takes several frames.
    pub fn load_batchable(runtime: &OrtRuntime, path: &Path) -> Result<Self, FaceError> {
        let bytes = batchable(&read_model(path)?).map_err(|e| model_err(path, e))?;
        Self::with_bytes(runtime, path, bytes)
    }

    fn with_bytes(runtime: &OrtRuntime, path: &Path, bytes: Vec<u8>) -> Result<Self, FaceError> {
        let net = Self {
            runtime: runtime.clone(),
            bytes: bytes.into(),
            path: path.to_path_buf(),
        };
        net.session()?;
        Ok(net)
    }

    /// A session for one thread.
    pub fn session(&self) -> Result<OrtNetSession, FaceError> {
        let (session, input) = session(&self.runtime, &self.path, &self.bytes, 1, false, false)?;
        Ok(OrtNetSession { session, input })
    }
}

/// A session of the model `bytes` (read from `path`, which errors name)
/// on `runtime`, fully optimised, with `intra_threads` intra-op threads
/// that spin or not, denormals flushed to zero or not; and the name of its
/// first input.
fn session(
    runtime: &OrtRuntime,
    path: &Path,
    bytes: &[u8],
    intra_threads: usize,
    spinning: bool,
    flush_to_zero: bool,
) -> Result<(Session, String), FaceError> {
    let err = |e: ort::Error| model_err(path, e);
    let mut builder = Session::builder(&runtime.env)
        .map_err(err)?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| err(e.into()))?
        .with_intra_threads(intra_threads)
        .map_err(|e| err(e.into()))?
        .with_intra_op_spinning(spinning)
        .map_err(|e| err(e.into()))?;
    if flush_to_zero {
        builder = builder.with_flush_to_zero().map_err(|e| err(e.into()))?;
    }
    let session = builder.commit_from_memory(bytes).map_err(err)?;
    let Some(input) = session.inputs().first().map(|i| i.name().to_string()) else {
        return Err(model_err(path, "the model has no input"));
    };
    Ok((session, input))
}

/// One thread's session of an [`OrtNet`].
pub struct OrtNetSession {
    session: Session,
    input: String,
}

impl OrtNetSession {
    /// Runs one input of `shape`: every output, flat, with its shape (as
    /// the tract plans answer).
    pub(crate) fn run(
        &mut self,
        shape: &[usize],
        data: &[f32],
    ) -> Result<Vec<super::model::Output>, FaceError> {
        let err = |e: ort::Error| FaceError::Model(e.to_string());
        let input = TensorRef::from_array_view((shape.to_vec(), data)).map_err(err)?;
        let outputs = self
            .session
            .run(ort::inputs![self.input.as_str() => input])
            .map_err(err)?;
        let mut all = Vec::with_capacity(outputs.len());
        for (_, value) in outputs.iter() {
            let (shape, flat) = value.try_extract_tensor::<f32>().map_err(err)?;
            let shape = shape
                .iter()
                .map(|d| {
                    usize::try_from(*d).map_err(|_| FaceError::BadOutput(format!("output dimension {d}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            all.push((shape, flat.to_vec()));
        }
        Ok(all)
    }
}

/// The ONNX Runtime backend for one inference thread (its own session).
pub struct OrtEmbedder {
    session: Session,
    input: String,
    sizes: [usize; 1],
    dim: usize,
    /// The batch's input, reused between runs.
    data: Vec<f32>,
}

impl OrtEmbedder {
    /// Runs one batch (at most the largest size), returning the raw rows.
    fn run(&mut self, faces: &[FaceInput]) -> Result<Vec<Vec<f32>>, FaceError> {
        let b = faces.len();
        self.data.clear();
        concat(faces, &mut self.data)?;
        let err = |e: ort::Error| FaceError::Model(e.to_string());
        let input = TensorRef::from_array_view(([b, 3, FACE_SIZE, FACE_SIZE], &*self.data)).map_err(err)?;
        let outputs = self
            .session
            .run(ort::inputs![self.input.as_str() => input])
            .map_err(err)?;
        if outputs.len() == 0 {
            return Err(FaceError::BadOutput("the model has no output".into()));
        }
        let (shape, flat) = outputs[0].try_extract_tensor::<f32>().map_err(err)?;
        rows(flat, b, self.dim, &shape[..])
    }
}

impl Embedder for OrtEmbedder {
    fn dim(&self) -> usize {
        self.dim
    }

    fn batch_sizes(&self) -> &[usize] {
        &self.sizes
    }

    fn embed(&mut self, faces: &[FaceInput]) -> Result<Vec<Result<Embedding, FaceError>>, FaceError> {
        let mut out = Vec::with_capacity(faces.len());
        for chunk in faces.chunks(self.sizes[0]) {
            out.extend(self.run(chunk)?.into_iter().map(Embedding::normalised));
        }
        Ok(out)
    }
}

/// The model with its batch dimension made free, re-encoded; the bytes as
/// they are when it already is. An error for bytes that are not an ONNX
/// model.
pub(crate) fn batchable(raw: &[u8]) -> Result<Vec<u8>, String> {
    use pb::tensor_shape_proto::dimension::Value as Dim;

    let mut model = pb::ModelProto::decode(raw).map_err(|e| format!("not an ONNX model: {e}"))?;
    let Some(graph) = model.graph.as_mut() else {
        return Err("not an ONNX model: no graph".into());
    };
    let initialised: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let Some(input) = graph
        .input
        .iter()
        .position(|i| !initialised.contains(&i.name.as_str()))
    else {
        return Err("the model has no input".into());
    };
    let fixed_at_one = matches!(
        first_dim(&mut graph.input[input]).and_then(|d| d.value.clone()),
        Some(Dim::DimValue(1))
    );
    if !fixed_at_one {
        return Ok(raw.to_vec());
    }
    if let Some(d) = first_dim(&mut graph.input[input]) {
        d.value = Some(Dim::DimParam("batch".into()));
    }
    // A Reshape to [1, -1] feeding an output: at batch 1 it is a flatten.
    let outputs: Vec<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    let flat_shapes: Vec<String> = graph
        .initializer
        .iter()
        .filter(|t| int64s(t).as_deref() == Some(&[1, -1]))
        .map(|t| t.name.clone())
        .collect();
    for node in &mut graph.node {
        if node.op_type == "Reshape"
            && node.input.len() == 2
            && flat_shapes.contains(&node.input[1])
            && node.output.iter().any(|o| outputs.contains(o))
        {
            node.op_type = "Flatten".into();
            node.input.truncate(1);
            node.attribute = vec![pb::AttributeProto {
                name: "axis".into(),
                r#type: pb::attribute_proto::AttributeType::Int as i32,
                i: 1,
                ..Default::default()
            }];
        }
    }
    // Shapes no node reads any more (ONNX Runtime warns about them).
    let used: Vec<String> = graph.node.iter().flat_map(|n| n.input.iter().cloned()).collect();
    graph
        .initializer
        .retain(|t| !flat_shapes.contains(&t.name) || used.contains(&t.name));
    for o in &mut graph.output {
        if let Some(d) = first_dim(o) {
            d.value = Some(Dim::DimParam("batch".into()));
        }
    }
    Ok(model.encode_to_vec())
}

/// The first dimension of a tensor value's declared shape.
fn first_dim(v: &mut pb::ValueInfoProto) -> Option<&mut pb::tensor_shape_proto::Dimension> {
    let pb::type_proto::Value::TensorType(t) = v.r#type.as_mut()?.value.as_mut()?;
    t.shape.as_mut()?.dim.first_mut()
}

/// The values of an int64 tensor (raw or listed).
fn int64s(t: &pb::TensorProto) -> Option<Vec<i64>> {
    if t.data_type != pb::tensor_proto::DataType::Int64 as i32 {
        return None;
    }
    if !t.int64_data.is_empty() {
        return Some(t.int64_data.clone());
    }
    if !t.raw_data.len().is_multiple_of(8) {
        return None;
    }
    Some(
        t.raw_data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect(),
    )
}
