-- The other four VL53L8CH matrices of a sample and what the analysis derived
-- from it (heights, weight uncertainty, defects, spectral ratios and indices,
-- anomalies, alerts) as JSON. Samples stored before this have NULL here.

ALTER TABLE sqal_samples ADD COLUMN tof_reflectance TEXT;
ALTER TABLE sqal_samples ADD COLUMN tof_amplitude TEXT;
ALTER TABLE sqal_samples ADD COLUMN tof_ambient TEXT;
ALTER TABLE sqal_samples ADD COLUMN tof_status TEXT;
ALTER TABLE sqal_samples ADD COLUMN details TEXT;
