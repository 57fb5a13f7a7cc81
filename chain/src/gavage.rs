//! Gavage simulator: the per-duck model of a lot and the task that runs the
//! lots of one run in accelerated time.

use crate::meals::{MealError, MealPayload};
use crate::params::GavageParams;
use crate::services::Services;
use crate::store::NewLot;
use crate::supervisor::TaskContext;
use crate::views::{Event, LotProgress};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Duration;
use tokio::time::Instant;

/// Simulated seconds between two meals (matin and soir are 12 h apart).
pub const MEAL_SPACING_S: f64 = 12.0 * 3600.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Genetique {
    Mulard,
    Barbarie,
    Pekin,
}

impl Genetique {
    pub fn as_str(self) -> &'static str {
        match self {
            Genetique::Mulard => "Mulard",
            Genetique::Barbarie => "Barbarie",
            Genetique::Pekin => "Pékin",
        }
    }

    /// Draws a genetics with the cooperative's mix: Mulard 60 %, Barbarie
    /// 20 %, Pékin 20 %.
    pub fn draw(rng: &mut impl Rng) -> Genetique {
        let roll: f64 = rng.gen();
        if roll < 0.6 {
            Genetique::Mulard
        } else if roll < 0.8 {
            Genetique::Barbarie
        } else {
            Genetique::Pekin
        }
    }

    /// Range of initial live weight, in g.
    pub fn initial_weight_range(self) -> (f64, f64) {
        match self {
            Genetique::Mulard => (4400.0, 4600.0),
            Genetique::Barbarie => (3800.0, 4000.0),
            Genetique::Pekin => (4000.0, 4200.0),
        }
    }

    /// Range of a duck's base weight gain per meal, in g.
    pub fn base_gain_range(self) -> (f64, f64) {
        match self {
            Genetique::Mulard => (60.0, 90.0),
            Genetique::Barbarie => (50.0, 70.0),
            Genetique::Pekin => (55.0, 75.0),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    Matin,
    Soir,
}

impl Moment {
    pub fn as_str(self) -> &'static str {
        match self {
            Moment::Matin => "matin",
            Moment::Soir => "soir",
        }
    }
}

/// Theoretical maize dose per duck, in g, on day `jour` of a `duree`-day lot:
/// the morning dose rises from 200 to 460 g, the evening one from 210 to 490 g.
pub fn dose_theorique(jour: u32, duree: u32, moment: Moment) -> f64 {
    let progress = jour as f64 / duree as f64;
    match moment {
        Moment::Matin => 200.0 + 260.0 * progress,
        Moment::Soir => 210.0 + 280.0 * progress,
    }
}

/// Multiplier of the base gain on day `jour`: ducks gain most at the start
/// (1.5×) and least on the last day (1.0×).
pub fn gain_factor(jour: u32, duree: u32) -> f64 {
    1.5 - 0.5 * jour as f64 / duree as f64
}

/// Probability that a living duck dies at one meal of day `jour`.
pub fn mortality_probability(jour: u32) -> f64 {
    0.0005 + 0.0001 * jour as f64
}

fn round_tenth(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

/// One lot of ducks and its state between meals.
#[derive(Debug, Clone)]
pub struct LotModel {
    pub genetique: Genetique,
    pub nb_canards: u32,
    /// Planned gavage duration `d` in days; meals run on days 0..=d.
    pub duree: u32,
    weights: Vec<f64>,
    base_gains: Vec<f64>,
    alive: Vec<bool>,
    meals_done: u32,
    rng: ChaCha8Rng,
}

/// Result of one meal, before it gets a lot code and a timestamp.
#[derive(Debug, Clone, PartialEq)]
pub struct MealOutcome {
    pub jour: u32,
    pub moment: Moment,
    pub dose_theorique: f64,
    pub dose_reelle: f64,
    pub poids_moyen: f64,
    pub nb_canards_vivants: u32,
    pub taux_mortalite: f64,
    pub temperature: f64,
    pub humidite: f64,
    pub is_last: bool,
}

impl LotModel {
    /// Draws a lot: genetics, 45..=55 ducks, 11..=14 days, and each duck's
    /// initial weight and base gain.
    pub fn draw(seed: u64) -> LotModel {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let genetique = Genetique::draw(&mut rng);
        let nb_canards = rng.gen_range(45..=55);
        let duree = rng.gen_range(11..=14);
        let (w_min, w_max) = genetique.initial_weight_range();
        let (g_min, g_max) = genetique.base_gain_range();
        let weights = (0..nb_canards)
            .map(|_| rng.gen_range(w_min..w_max))
            .collect();
        let base_gains = (0..nb_canards)
            .map(|_| rng.gen_range(g_min..g_max))
            .collect();
        LotModel {
            genetique,
            nb_canards,
            duree,
            weights,
            base_gains,
            alive: vec![true; nb_canards as usize],
            meals_done: 0,
            rng,
        }
    }

    /// Two meals a day on days 0..=d.
    pub fn meals_total(&self) -> u32 {
        2 * (self.duree + 1)
    }

    pub fn meals_done(&self) -> u32 {
        self.meals_done
    }

    pub fn is_finished(&self) -> bool {
        self.meals_done >= self.meals_total()
    }

    pub fn living(&self) -> u32 {
        self.alive.iter().filter(|alive| **alive).count() as u32
    }

    pub fn mean_weight(&self) -> f64 {
        let (sum, count) = self
            .weights
            .iter()
            .zip(&self.alive)
            .filter(|(_, alive)| **alive)
            .fold((0.0, 0u32), |(sum, count), (weight, _)| {
                (sum + weight, count + 1)
            });
        if count == 0 {
            0.0
        } else {
            sum / count as f64
        }
    }

    /// Runs the next meal: deaths first, then each survivor's gain.
    pub fn next_meal(&mut self) -> Option<MealOutcome> {
        if self.is_finished() {
            return None;
        }
        let jour = self.meals_done / 2;
        let moment = if self.meals_done.is_multiple_of(2) {
            Moment::Matin
        } else {
            Moment::Soir
        };
        let dose_theorique = dose_theorique(jour, self.duree, moment);
        let dose_reelle = round_tenth(dose_theorique * self.rng.gen_range(0.95..1.05));

        let death_probability = mortality_probability(jour);
        let factor = gain_factor(jour, self.duree);
        for duck in 0..self.weights.len() {
            if !self.alive[duck] {
                continue;
            }
            if self.rng.gen_bool(death_probability) {
                self.alive[duck] = false;
                continue;
            }
            self.weights[duck] += self.base_gains[duck] * factor * self.rng.gen_range(0.9..1.1);
        }

        self.meals_done += 1;
        let living = self.living();
        Some(MealOutcome {
            jour,
            moment,
            dose_theorique: round_tenth(dose_theorique),
            dose_reelle,
            poids_moyen: round_tenth(self.mean_weight()),
            nb_canards_vivants: living,
            taux_mortalite: round_tenth(
                100.0 * (self.nb_canards - living) as f64 / self.nb_canards as f64,
            ),
            temperature: round_tenth(self.rng.gen_range(19.0..23.0)),
            humidite: round_tenth(self.rng.gen_range(55.0..75.0)),
            is_last: self.is_finished(),
        })
    }
}

/// A lot of the running simulation with its code and its real-time clock.
struct RunningLot {
    code_lot: String,
    gaveur: String,
    site: String,
    model: LotModel,
    /// Real time at which meal number `first_meal` is due; the others
    /// follow 12 simulated hours apart.
    started: Instant,
    /// 0 for a new lot; for a resumed one, its first meal after the resume.
    first_meal: u32,
    started_at: chrono::DateTime<chrono::Utc>,
}

impl RunningLot {
    /// Real time at which meal number `index` is due.
    fn due(&self, index: u32, acceleration: f64) -> Instant {
        let ahead = index.saturating_sub(self.first_meal);
        self.started + Duration::from_secs_f64(ahead as f64 * MEAL_SPACING_S / acceleration)
    }

    fn progress(&self, last: Option<&MealOutcome>, status: &str) -> LotProgress {
        LotProgress {
            code_lot: self.code_lot.clone(),
            gaveur: self.gaveur.clone(),
            site: self.site.clone(),
            genetique: self.model.genetique.as_str().to_string(),
            duree_jours: self.model.duree as i64,
            meals_done: self.model.meals_done() as i64,
            meals_total: self.model.meals_total() as i64,
            jour: last.map(|meal| meal.jour as i64).unwrap_or(0),
            poids_moyen: Some(
                last.map(|meal| meal.poids_moyen)
                    .unwrap_or_else(|| round_tenth(self.model.mean_weight())),
            ),
            nb_canards_vivants: Some(self.model.living() as i64),
            taux_mortalite: last.map(|meal| meal.taux_mortalite),
            status: status.to_string(),
        }
    }
}

/// Runs one gavage run: creates `nb_lots` lots, then records their meals
/// when each falls due, until every lot is ready for slaughter or the task
/// is cancelled. Returns a short note on what was done.
///
/// With `resume`, the run already exists: its seed draws the same lots
/// again, each stored lot replays its stored meals to get back the state
/// it had, and the run goes on from each lot's next meal, due at once.
/// Lots the interrupted run had not created yet are created. The meals of
/// a resumed run are those the uninterrupted run would have recorded.
pub async fn run(
    services: Services,
    params: GavageParams,
    run_id: String,
    resume: bool,
    ctx: TaskContext,
) -> anyhow::Result<String> {
    let (seed, stored_lots) = if resume {
        let stored = services.store.gavage_run(&run_id).await?.ok_or_else(|| {
            anyhow::anyhow!("gavage run {run_id} is not stored, nothing to resume")
        })?;
        anyhow::ensure!(
            stored.nb_lots == params.nb_lots,
            "gavage run {run_id} has {} lots, not {}",
            stored.nb_lots,
            params.nb_lots
        );
        (stored.seed, services.store.run_lots(&run_id).await?)
    } else {
        let seed = params.seed.unwrap_or_else(rand::random);
        services
            .store
            .insert_gavage_run(&run_id, params.nb_lots, params.acceleration, seed)
            .await?;
        (seed, Vec::new())
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);

    let gaveurs = services.store.gaveurs().await?;
    anyhow::ensure!(
        !gaveurs.is_empty(),
        "the gaveurs table is empty; migrations did not seed it"
    );
    // Every lot is drawn first, in the order the seed gives, and the new
    // ones are then created in one transaction.
    let created = Instant::now();
    let created_at = chrono::Utc::now();
    let mut drawn = Vec::with_capacity(params.nb_lots as usize);
    for index in 0..params.nb_lots {
        let gaveur = gaveurs[rng.gen_range(0..gaveurs.len())].clone();
        let model = LotModel::draw(rng.gen());
        // Each lot keeps its own clock: after the first, lots start up to
        // half a simulated day later, so their meals interleave.
        let offset_s = if index == 0 {
            0.0
        } else {
            rng.gen_range(0.0..MEAL_SPACING_S)
        };
        // The lot's clock starts at this real time; its meals then follow
        // 12 simulated hours apart.
        let delay = Duration::from_secs_f64(offset_s / params.acceleration);
        drawn.push((gaveur, model, delay));
    }

    let mut lots = Vec::with_capacity(drawn.len());
    let mut fresh = Vec::new();
    for (index, (gaveur, model, delay)) in drawn.into_iter().enumerate() {
        match stored_lots.get(index) {
            Some(stored) => lots.push(resumed_lot(stored, gaveur, model)?),
            None => fresh.push((
                gaveur,
                model,
                created_at + chrono::Duration::from_std(delay)?,
                delay,
            )),
        }
    }
    let started_at: Vec<String> = fresh
        .iter()
        .map(|(_, _, started_at, _)| crate::time::format(*started_at))
        .collect();
    let new_lots: Vec<NewLot> = fresh
        .iter()
        .zip(&started_at)
        .map(|((gaveur, model, _, _), started_at)| NewLot {
            run_id: &run_id,
            gaveur_id: gaveur.id,
            site: &gaveur.site,
            genetique: model.genetique.as_str(),
            nb_canards: model.nb_canards,
            duree_jours: model.duree,
            started_at: started_at.clone(),
        })
        .collect();
    let codes = if new_lots.is_empty() {
        Vec::new()
    } else {
        services.store.create_lots(&new_lots).await?
    };
    drop(new_lots);
    for ((gaveur, model, started_at, delay), code_lot) in fresh.into_iter().zip(codes) {
        let lot = RunningLot {
            code_lot,
            gaveur: gaveur.nom,
            site: gaveur.site,
            model,
            started: created + delay,
            first_meal: 0,
            started_at,
        };
        tracing::info!(lot.code = %lot.code_lot, run.id = %run_id, "lot created");
        ctx.count(|counters| counters.lots += 1);
        services.bus.publish(Event::LotCreated {
            run_id: run_id.clone(),
            lot: lot.progress(None, "en_gavage"),
        });
        lots.push(lot);
    }

    loop {
        let next_due = lots
            .iter()
            .filter(|lot| !lot.model.is_finished())
            .map(|lot| lot.due(lot.model.meals_done(), params.acceleration))
            .min();
        let Some(next_due) = next_due else { break };
        tokio::select! {
            _ = ctx.cancel.cancelled() => return Ok(format!("{} lots interrompus", unfinished(&lots))),
            _ = tokio::time::sleep_until(next_due) => {}
        }

        // Every meal due by now goes into one batch, so a run that falls
        // behind its clock catches up in a few transactions.
        let now = Instant::now();
        let mut payloads = Vec::new();
        let mut progress = Vec::new();
        for lot in lots.iter_mut() {
            let mut latest = None;
            while !lot.model.is_finished()
                && lot.due(lot.model.meals_done(), params.acceleration) <= now
            {
                let index = lot.model.meals_done();
                let meal = lot
                    .model
                    .next_meal()
                    .expect("an unfinished lot has a next meal");
                let sim_time = lot.started_at
                    + chrono::Duration::milliseconds(
                        (index as f64 * MEAL_SPACING_S * 1000.0) as i64,
                    );
                payloads.push(MealPayload {
                    code_lot: lot.code_lot.clone(),
                    jour: meal.jour,
                    moment: meal.moment.as_str().to_string(),
                    dose_theorique: meal.dose_theorique,
                    dose_reelle: meal.dose_reelle,
                    poids_moyen: meal.poids_moyen,
                    nb_canards_vivants: meal.nb_canards_vivants,
                    taux_mortalite: meal.taux_mortalite,
                    temperature: meal.temperature,
                    humidite: meal.humidite,
                    fed_at: Some(crate::time::format(sim_time)),
                });
                let status = if meal.is_last {
                    "pret_abattage"
                } else {
                    "en_gavage"
                };
                // Taken now: the lot's later meals in the batch move its model on.
                latest = Some(lot.progress(Some(&meal), status));
            }
            // One event per lot and batch, with its progress after its last
            // meal: a run catching up would otherwise flood the streams with
            // states that are already out of date.
            progress.extend(latest);
        }
        if payloads.is_empty() {
            continue;
        }
        match services.ingest_meals(&payloads).await {
            Ok(_) => {}
            Err(MealError::Internal(error)) => return Err(error),
            Err(refused) => {
                anyhow::bail!("the gavage simulator produced an invalid meal: {refused}")
            }
        }
        ctx.count(|counters| counters.meals += payloads.len() as u64);
        for lot in progress {
            services.bus.publish(Event::MealRecorded { lot });
        }
    }
    Ok(format!("{} lots terminés", lots.len()))
}

/// Rebuilds a stored lot of a resumed run: the model the run's seed drew
/// for it, advanced by the meals already stored, with its next meal due now.
fn resumed_lot(
    stored: &crate::store::StoredLot,
    gaveur: crate::store::Gaveur,
    mut model: LotModel,
) -> anyhow::Result<RunningLot> {
    anyhow::ensure!(
        stored.gaveur_id == gaveur.id
            && stored.genetique == model.genetique.as_str()
            && stored.nb_canards == model.nb_canards as i64
            && stored.duree_jours == model.duree as i64,
        "lot {} does not match what the run's seed draws; the run cannot be resumed",
        stored.code_lot
    );
    for _ in 0..stored.meals {
        model.next_meal();
    }
    let started_at = chrono::DateTime::parse_from_rfc3339(&stored.started_at)
        .map_err(|error| anyhow::anyhow!("start of lot {}: {error}", stored.code_lot))?
        .with_timezone(&chrono::Utc);
    Ok(RunningLot {
        code_lot: stored.code_lot.clone(),
        gaveur: gaveur.nom,
        site: gaveur.site,
        first_meal: model.meals_done(),
        model,
        started: Instant::now(),
        started_at,
    })
}

fn unfinished(lots: &[RunningLot]) -> usize {
    lots.iter().filter(|lot| !lot.model.is_finished()).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dose_at_day_zero_and_last_day() {
        assert_eq!(dose_theorique(0, 12, Moment::Matin), 200.0);
        assert_eq!(dose_theorique(0, 12, Moment::Soir), 210.0);
        assert_eq!(dose_theorique(12, 12, Moment::Matin), 460.0);
        assert_eq!(dose_theorique(12, 12, Moment::Soir), 490.0);
    }

    #[test]
    fn gain_factor_first_and_last_day() {
        assert_eq!(gain_factor(0, 13), 1.5);
        assert_eq!(gain_factor(13, 13), 1.0);
    }

    #[test]
    fn mortality_probability_rises_per_day() {
        assert!((mortality_probability(0) - 0.0005).abs() < 1e-12);
        assert!((mortality_probability(10) - 0.0015).abs() < 1e-12);
    }

    #[test]
    fn lot_draw_stays_in_ranges() {
        for seed in 0..200 {
            let lot = LotModel::draw(seed);
            assert!((45..=55).contains(&lot.nb_canards), "seed {seed}");
            assert!((11..=14).contains(&lot.duree), "seed {seed}");
        }
    }

    #[test]
    fn lot_runs_two_meals_a_day_then_stops() {
        let mut lot = LotModel::draw(7);
        let mut meals = Vec::new();
        while let Some(meal) = lot.next_meal() {
            meals.push(meal);
        }
        assert_eq!(meals.len() as u32, 2 * (lot.duree + 1));
        assert_eq!(meals[0].jour, 0);
        assert_eq!(meals[0].moment, Moment::Matin);
        assert_eq!(meals[1].moment, Moment::Soir);
        let last = meals.last().unwrap();
        assert_eq!(last.jour, lot.duree);
        assert_eq!(last.moment, Moment::Soir);
        assert!(last.is_last);
        assert_eq!(meals.iter().filter(|meal| meal.is_last).count(), 1);
    }

    #[test]
    fn actual_dose_within_five_percent() {
        let mut lot = LotModel::draw(11);
        while let Some(meal) = lot.next_meal() {
            let ratio = meal.dose_reelle / meal.dose_theorique;
            assert!(
                (0.949..=1.051).contains(&ratio),
                "jour {} ratio {ratio}",
                meal.jour
            );
        }
    }

    #[test]
    fn mulard_final_weight_in_expected_range() {
        let mut finals = Vec::new();
        for seed in 0..400 {
            let mut lot = LotModel::draw(seed);
            if lot.genetique != Genetique::Mulard {
                continue;
            }
            while lot.next_meal().is_some() {}
            finals.push(lot.mean_weight());
        }
        let mean = finals.iter().sum::<f64>() / finals.len() as f64;
        assert!(
            (6700.0..=7300.0).contains(&mean),
            "mean final Mulard weight {mean} g"
        );
    }

    #[test]
    fn same_seed_gives_same_meals() {
        let run = |seed| {
            let mut lot = LotModel::draw(seed);
            std::iter::from_fn(move || lot.next_meal()).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }
}
