//! `evalstream drift replay` (hidden): runs a series' detectors over score streams given as text,
//! for the detection-quality benchmark (`scripts/bench-drift.sh`), which feeds the same streams
//! to other detectors.
//!
//! Each input line is one stream: scores separated by spaces; a score passes at `pass_at` or
//! above. Each output line lists that stream's alarms as `INDEX` + `d` (down) or `u` (up). After
//! an alarm the series re-baselines at once, as if the alarm were acknowledged.

use std::io::{BufRead, Write};

use super::detect::{Direction, Params, SeriesState};

/// Runs the detectors over every stream of `input`.
pub fn run(
    params: &Params,
    pass_at: f64,
    input: impl BufRead,
    mut output: impl Write,
) -> anyhow::Result<()> {
    for (number, line) in input.lines().enumerate() {
        let line = line?;
        let mut series = SeriesState::default();
        let mut alarms = Vec::new();
        for (index, field) in line.split_ascii_whitespace().enumerate() {
            let value: f64 = field
                .parse()
                .map_err(|e| anyhow::anyhow!("line {}: `{field}`: {e}", number + 1))?;
            if let Some(direction) = series.observe(params, value, value >= pass_at, 0) {
                let tag = match direction {
                    Direction::Down => 'd',
                    Direction::Up => 'u',
                };
                alarms.push(format!("{index}{tag}"));
                series.rebaseline();
            }
        }
        writeln!(output, "{}", alarms.join(" "))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarms_are_listed_per_stream_and_bad_numbers_name_their_line() {
        let params = Params::new(1_000.0, 50, 0.05);
        let stable: Vec<&str> = std::iter::repeat_n(["1", "1", "1", "0"], 100)
            .flatten()
            .collect();
        let mut falling = stable.clone();
        falling.extend(std::iter::repeat_n("0", 100));
        let input = format!("{}\n{}\n", stable.join(" "), falling.join(" "));
        let mut out = Vec::new();
        run(&params, 1.0, input.as_bytes(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "", "a stable stream raises no alarm");
        let first: usize = lines[1]
            .split(' ')
            .next()
            .unwrap()
            .trim_end_matches('d')
            .parse()
            .unwrap();
        assert!(lines[1].ends_with('d') || lines[1].contains("d "));
        assert!((400..420).contains(&first), "{text}");
        let err = run(&params, 1.0, "1 x\n".as_bytes(), Vec::new()).unwrap_err();
        assert!(err.to_string().starts_with("line 1: `x`"), "{err}");
    }
}
