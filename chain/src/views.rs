//! Read models sent to pages and API clients, and the events of the chain.

use crate::grade::Grade;
use serde::{Deserialize, Serialize};

/// AS7341 channels in the order of every counts array: F1..F8, Clear, NIR.
pub const AS7341_CHANNELS: [&str; 10] = [
    "F1", "F2", "F3", "F4", "F5", "F6", "F7", "F8", "Clear", "NIR",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskName {
    Gavage,
    Monitor,
    Sqal,
}

impl TaskName {
    pub const ALL: [TaskName; 3] = [TaskName::Gavage, TaskName::Monitor, TaskName::Sqal];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskName::Gavage => "gavage",
            TaskName::Monitor => "monitor",
            TaskName::Sqal => "sqal",
        }
    }

    pub fn parse(text: &str) -> Option<TaskName> {
        TaskName::ALL.into_iter().find(|task| task.as_str() == text)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Stopped,
    Starting,
    Running,
    Stopping,
    Failed,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Stopped => "stopped",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Stopping => "stopping",
            TaskState::Failed => "failed",
        }
    }

    pub fn is_active(self) -> bool {
        matches!(self, TaskState::Starting | TaskState::Running)
    }
}

/// Work done by a task since it last started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskCounters {
    pub lots: u64,
    pub meals: u64,
    pub samples: u64,
    pub products: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub task: TaskName,
    pub state: TaskState,
    /// Parameters of the current or last run, as JSON.
    pub params: Option<serde_json::Value>,
    /// Identifier of the current or last gavage run; lots carry it.
    pub run_id: Option<String>,
    pub started_at: Option<String>,
    pub counters: TaskCounters,
    /// Short note on how the last run ended, such as "3 lots terminés".
    pub note: Option<String>,
    pub last_error: Option<String>,
    /// Name of the server instance that runs the task, when it is not the
    /// instance serving the request (several instances on one PostgreSQL database).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elsewhere: Option<String>,
    /// The last run was cut short by a crash; `params` and `run_id` are the
    /// ones it had, and the page offers to resume it.
    #[serde(default)]
    pub interrupted: bool,
}

impl TaskStatus {
    pub fn stopped(task: TaskName) -> Self {
        TaskStatus {
            task,
            state: TaskState::Stopped,
            params: None,
            run_id: None,
            started_at: None,
            counters: TaskCounters::default(),
            note: None,
            last_error: None,
            elsewhere: None,
            interrupted: false,
        }
    }
}

/// A traceable product as the JSON API and the demo page show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductView {
    pub product_id: String,
    pub token: String,
    pub code_lot: String,
    pub grade: Grade,
    pub final_score: f64,
    pub tof_score: f64,
    pub as7341_score: f64,
    pub qr_payload: String,
    pub created_at: String,
}

/// The lot behind a product, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LotView {
    pub code_lot: String,
    pub run_id: String,
    pub gaveur: String,
    pub site: String,
    pub region: String,
    pub genetique: String,
    pub nb_canards: i64,
    pub duree_jours: i64,
    pub status: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub meals: i64,
    pub poids_moyen_final: Option<f64>,
    pub nb_canards_vivants: Option<i64>,
    pub taux_mortalite: Option<f64>,
}

/// The measurement that produced a product's grade.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleView {
    pub device_id: String,
    pub measured_at: String,
    pub estimated_weight_g: Option<f64>,
    pub volume_cm3: Option<f64>,
    pub surface_uniformity: Option<f64>,
    pub freshness_index: Option<f64>,
    /// 64 ToF distances in mm, row by row.
    pub tof_distances: Vec<f64>,
    /// AS7341 counts in the order F1..F8, Clear, NIR.
    pub as7341_counts: Vec<f64>,
    /// Values derived by the analysis; `None` for samples stored before it existed.
    pub details: Option<SampleDetails>,
}

/// Everything the analysis derives from one measurement besides its scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleDetails {
    /// ToF zones whose target status is valid, out of 64.
    pub valid_zones: u32,
    /// Zones that see the liver rather than the tray.
    pub liver_zones: u32,
    pub height_mean_mm: f64,
    pub height_max_mm: f64,
    pub volume_cm3: f64,
    pub estimated_weight_g: f64,
    /// One standard deviation of the weight estimate, in g.
    pub weight_uncertainty_g: f64,
    pub surface_uniformity: f64,
    /// RMS gap to the fitted smooth dome, in mm; `None` below eight liver zones.
    pub roughness_mm: Option<f64>,
    pub defects: Vec<Defect>,
    pub ratios: Vec<RatioReading>,
    /// Indices in 0..1; 1 is best except for oxidation, where 1 is worst.
    pub freshness_index: f64,
    pub fat_quality_index: f64,
    pub oxidation_index: f64,
    pub colour_index: f64,
    /// Sensor anomalies such as a saturated or very weak channel.
    pub anomalies: Vec<String>,
    pub alerts: Vec<Alert>,
}

/// A surface defect found on the ToF frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Defect {
    pub kind: DefectKind,
    /// Zone row and column, 0..8.
    pub row: u32,
    pub col: u32,
    /// 0..1, from the height gap to the fitted dome.
    pub severity: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefectKind {
    /// A bump above the surface.
    ForeignBody,
    /// A dip inside the liver.
    Deformation,
    /// A missing piece on the liver's edge.
    DamagedEdge,
}

impl DefectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DefectKind::ForeignBody => "foreign_body",
            DefectKind::Deformation => "deformation",
            DefectKind::DamagedEdge => "damaged_edge",
        }
    }
}

/// Position of a spectral ratio against its reference bands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Band {
    Optimal,
    Acceptable,
    Out,
}

/// One spectral ratio with its bands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RatioReading {
    /// Such as `F1/F7` or `(F5+F6)/(F1+F2)`.
    pub name: String,
    pub value: f64,
    pub optimal: (f64, f64),
    pub acceptable: (f64, f64),
    pub band: Band,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertLevel {
    Warning,
    Critical,
}

/// A quality alert raised by one sample (DOMAIN.md §5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub level: AlertLevel,
    /// Stable code such as `oxidation_high`.
    pub code: String,
    /// The measured value that raised it.
    pub value: f64,
    /// The limit it crossed.
    pub limit: f64,
}

/// Outcome of checking a product's history in its lot's hash chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntegrityStatus {
    /// Every hash and link checks out and the stored rows match the events.
    Verified,
    /// Something was changed after it was recorded.
    Failed,
    /// The lot has no recorded history (data stored before the chain).
    Missing,
}

/// The proof behind a product's integrity check: its lot's chain up to the
/// product's creation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntegrityProof {
    pub status: IntegrityStatus,
    pub code_lot: String,
    pub product_id: String,
    /// Problems found by a failed check.
    pub problems: Vec<String>,
    pub events: Vec<ProofEvent>,
}

impl IntegrityProof {
    /// Keeps what the trace page shows: this product's own steps, without
    /// payloads or previous hashes. The verification endpoint serves the
    /// whole proof; the page stays small for phones.
    pub fn for_page(mut self) -> IntegrityProof {
        self.events.retain(|event| event.payload.is_some());
        for event in &mut self.events {
            event.payload = None;
            event.prev_hash.clear();
        }
        self
    }
}

/// One event of a lot's chain. Events of the lot's other samples and
/// products carry no payload, only their hashes, which still prove the links.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProofEvent {
    pub seq: i64,
    pub kind: String,
    pub recorded_at: String,
    pub prev_hash: String,
    pub hash: String,
    pub payload: Option<serde_json::Value>,
}

/// Everything the consumer page shows for one trace token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceView {
    pub product: ProductView,
    pub lot: LotView,
    pub sample: SampleView,
    /// The lot's recorded meals, in order.
    pub meals: Vec<MealPoint>,
    pub integrity: IntegrityProof,
}

/// One recorded meal, for the feeding curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MealPoint {
    pub jour: i64,
    /// `matin` or `soir`.
    pub moment: String,
    /// Maize per duck, in g.
    pub dose_reelle: f64,
    /// Mean live weight after the meal, in g.
    pub poids_moyen: f64,
}

/// One lot of the current gavage run, as the demo page follows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LotProgress {
    pub code_lot: String,
    pub gaveur: String,
    pub site: String,
    pub genetique: String,
    pub duree_jours: i64,
    pub meals_done: i64,
    pub meals_total: i64,
    pub jour: i64,
    pub poids_moyen: Option<f64>,
    pub nb_canards_vivants: Option<i64>,
    pub taux_mortalite: Option<f64>,
    pub status: String,
}

/// A graded measurement as the demo page shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradedSample {
    /// Row id in `sqal_samples`; ids grow with time.
    pub sample_id: i64,
    pub code_lot: String,
    pub sample_index: i64,
    /// `None` when the measurement is invalid.
    pub grade: Option<Grade>,
    pub final_score: f64,
    pub tof_score: f64,
    pub as7341_score: f64,
    pub invalid_reason: Option<String>,
    /// 64 ToF distances in mm, row by row.
    pub tof_distances: Vec<f64>,
    /// AS7341 counts in the order F1..F8, Clear, NIR.
    pub as7341_counts: Vec<f64>,
    pub details: Option<SampleDetails>,
}

/// Number of samples per outcome, in the order A+, A, B, C, REJECT, invalid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GradeCounts(pub [i64; 6]);

impl GradeCounts {
    pub fn slot(grade: Option<Grade>) -> usize {
        match grade {
            Some(Grade::APlus) => 0,
            Some(Grade::A) => 1,
            Some(Grade::B) => 2,
            Some(Grade::C) => 3,
            Some(Grade::Reject) => 4,
            None => 5,
        }
    }

    pub fn add(&mut self, grade: Option<Grade>) {
        self.0[Self::slot(grade)] += 1;
    }

    pub fn total(&self) -> i64 {
        self.0.iter().sum()
    }
}

/// The whole state the demo page shows, read at one moment. Events with an
/// id after `position` may already be included, so applying them again must
/// change nothing: lots and products are replaced by key, and samples up to
/// `counted_up_to` are already in `grade_counts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainSnapshot {
    /// Stream position taken before the reads: `<boot>-<event id>`.
    pub position: String,
    pub tasks: Vec<TaskStatus>,
    /// Latest gavage run and its lots.
    pub run_id: Option<String>,
    pub lots: Vec<LotProgress>,
    /// Newest products first.
    pub products: Vec<ProductView>,
    pub queue_pending: i64,
    pub queue_inspecting: i64,
    /// Outcomes of the samples of the latest run's lots.
    pub grade_counts: GradeCounts,
    /// Highest sample id counted in `grade_counts`.
    pub counted_up_to: i64,
    pub latest_sample: Option<GradedSample>,
}

/// A state change of the chain. Pages receive them over Server-Sent Events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Task state or counters changed (counters at most a few times a second).
    Task {
        status: TaskStatus,
    },
    LotCreated {
        run_id: String,
        lot: LotProgress,
    },
    MealRecorded {
        lot: LotProgress,
    },
    LotFinished {
        code_lot: String,
    },
    LotClaimed {
        code_lot: String,
        attempts: i64,
    },
    /// The inspection queue after a change.
    Queue {
        pending: i64,
        inspecting: i64,
    },
    SampleGraded {
        run_id: String,
        sample: GradedSample,
    },
    ProductCreated {
        run_id: String,
        product: ProductView,
    },
    LotInspected {
        code_lot: String,
        verdict: String,
    },
    /// Sent first to a client whose position is unknown or too old to
    /// replay: it replaces everything the client shows.
    Snapshot {
        snapshot: Box<ChainSnapshot>,
    },
}

/// An event with its sequence number and time, as sent on the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    pub id: u64,
    pub at: String,
    pub event: Event,
    /// Instance that produced the event, when it is another instance on
    /// the same PostgreSQL database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}
