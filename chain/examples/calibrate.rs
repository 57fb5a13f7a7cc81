//! Calibrates the SQAL twin's quality bands so that the measured grade mix
//! of each quality profile matches its target.
//!
//! Measurement noise moves some livers across a grade boundary. This program
//! measures, for each latent quality band, the grade mix the analysis gives
//! it (the transfer matrix), then solves `transfer · shares = target` for the
//! share of livers to draw in each band, and checks the result on fresh
//! samples. Paste the printed shares into `sqal::band_shares`.
//!
//! Run: `cargo run --release -p chain --example calibrate [samples per band]`

use chain::grade::Grade;
use chain::params::QualityProfile;
use chain::sqal::{analyze, band_shares, draw_quality_with, simulate, QUALITY_BANDS};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn grade_slot(grade: Grade) -> usize {
    Grade::ALL
        .iter()
        .position(|g| *g == grade)
        .expect("a known grade")
}

/// Grade mix (fractions, valid samples only) of livers drawn by `draw`.
fn mix(samples: u64, seed: u64, mut draw: impl FnMut(&mut ChaCha8Rng) -> f64) -> [f64; 5] {
    let mut counts = [0u64; 5];
    for index in 0..samples {
        let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(1_000_003) + index);
        let quality = draw(&mut rng);
        let weight = 560.0 * rng.gen_range(0.85..1.15);
        if let Some(grade) = analyze(&simulate(&mut rng, quality, weight)).grade {
            counts[grade_slot(grade)] += 1;
        }
    }
    let valid: u64 = counts.iter().sum();
    counts.map(|count| count as f64 / valid as f64)
}

/// Solves `matrix · x = rhs` for a 5 × 5 system by Gaussian elimination.
fn solve(mut matrix: [[f64; 5]; 5], mut rhs: [f64; 5]) -> [f64; 5] {
    for pivot in 0..5 {
        let best = (pivot..5)
            .max_by(|a, b| matrix[*a][pivot].abs().total_cmp(&matrix[*b][pivot].abs()))
            .expect("a pivot row");
        matrix.swap(pivot, best);
        rhs.swap(pivot, best);
        for row in pivot + 1..5 {
            let factor = matrix[row][pivot] / matrix[pivot][pivot];
            for col in pivot..5 {
                matrix[row][col] -= factor * matrix[pivot][col];
            }
            rhs[row] -= factor * rhs[pivot];
        }
    }
    let mut x = [0.0; 5];
    for row in (0..5).rev() {
        let known: f64 = (row + 1..5).map(|col| matrix[row][col] * x[col]).sum();
        x[row] = (rhs[row] - known) / matrix[row][row];
    }
    x
}

fn percent(values: &[f64; 5]) -> String {
    values
        .iter()
        .map(|value| format!("{:5.1}", 100.0 * value))
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    let per_band: u64 = std::env::args()
        .nth(1)
        .map(|text| {
            text.parse()
                .expect("samples per band must be a whole number")
        })
        .unwrap_or(20_000);

    // transfer[grade][band]: share of band `band`'s livers graded `grade`.
    let mut transfer = [[0.0; 5]; 5];
    for (band, (low, high)) in QUALITY_BANDS.iter().enumerate() {
        let column = mix(per_band, 1 + band as u64, |rng| rng.gen_range(*low..*high));
        println!(
            "band {low:.2}..{high:.2} gives A+ A B C REJECT % {}",
            percent(&column)
        );
        for (grade, share) in column.iter().enumerate() {
            transfer[grade][band] = *share;
        }
    }

    for profile in QualityProfile::ALL {
        let target = profile.target_mix().map(|share| share / 100.0);
        let shares = solve(transfer, target).map(|share| share.max(0.0));
        let total: f64 = shares.iter().sum();
        let shares = shares.map(|share| (share / total * 1000.0).round() / 1000.0);
        let check = mix(per_band, 99, |rng| draw_quality_with(rng, &shares));
        let current = mix(per_band, 98, |rng| {
            draw_quality_with(rng, &band_shares(profile))
        });
        println!("\n{}:", profile.as_str());
        println!("  target             {}", percent(&target));
        println!(
            "  in use  {:?} gives {}",
            band_shares(profile),
            percent(&current)
        );
        println!("  solved  {shares:?} gives {}", percent(&check));
    }
}
