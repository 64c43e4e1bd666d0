import Foundation
import RampartCore

/// One measured figure: Rampart's median beside the baseline it is compared with.
struct Figure: Codable {
    var benchmark: String
    var median_ns: UInt64
    var baseline: String?
    var baseline_median_ns: UInt64?
    /// Optional extra facts (p99, counts, memory, targets).
    var extra: [String: String]? = nil

    /// Baseline time divided by Rampart's time: above 1 means Rampart is faster.
    var speedup: Double? {
        guard let b = baseline_median_ns, median_ns > 0 else { return nil }
        return Double(b) / Double(median_ns)
    }

    private enum CodingKeys: String, CodingKey {
        case benchmark, median_ns, baseline, baseline_median_ns, extra
    }

    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(benchmark, forKey: .benchmark)
        try c.encode(median_ns, forKey: .median_ns)
        // null, not absent, when there is no baseline: the format asks for the key.
        try c.encode(baseline, forKey: .baseline)
        try c.encode(baseline_median_ns, forKey: .baseline_median_ns)
        if let extra { try c.encode(extra, forKey: .extra) }
    }
}

/// Collects figures and prints them as a table for people or as one JSON array for tools.
final class Report {
    private(set) var figures: [Figure] = []
    let json: Bool

    init(json: Bool) { self.json = json }

    func add(_ figure: Figure) {
        figures.append(figure)
        if !json { printRow(figure) }
    }

    /// Progress and notes: standard error in JSON mode, so standard output stays one array.
    func note(_ text: String) {
        if json {
            FileHandle.standardError.write(Data((text + "\n").utf8))
        } else {
            print(text)
        }
    }

    func finish() {
        guard json else { return }
        print((try? RampartJSON.text(figures, pretty: true)) ?? "[]")
    }

    private func printRow(_ f: Figure) {
        var line = "\(f.benchmark.padding(toLength: 44, withPad: " ", startingAt: 0)) \(formatDuration(f.median_ns))"
        if let b = f.baseline, let bn = f.baseline_median_ns {
            line += "   vs \(b): \(formatDuration(bn))"
            if let s = f.speedup { line += String(format: "   (%.1f×)", s) }
        }
        if let extra = f.extra, !extra.isEmpty {
            line += "   " + extra.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        }
        print(line)
    }
}

/// Human-readable duration: ns, µs, ms or s with three significant digits.
func formatDuration(_ ns: UInt64) -> String {
    let v = Double(ns)
    switch v {
    case ..<1_000: return String(format: "%.0f ns", v)
    case ..<1_000_000: return String(format: "%.3g µs", v / 1_000)
    case ..<1_000_000_000: return String(format: "%.3g ms", v / 1_000_000)
    default: return String(format: "%.3g s", v / 1_000_000_000)
    }
}

/// Monotonic clock in nanoseconds.
@inline(__always)
func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// This process's CPU time (user and system, all threads).
func processCPUNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Runs `body` `repeats` times and returns every duration in nanoseconds.
func measure(repeats: Int, _ body: () throws -> Void) rethrows -> [UInt64] {
    var samples: [UInt64] = []
    samples.reserveCapacity(repeats)
    for _ in 0..<repeats {
        let t0 = monotonicNanos()
        try body()
        samples.append(monotonicNanos() - t0)
    }
    return samples
}

/// Median of samples (the lower middle for an even count; 0 when empty).
func median(_ samples: [UInt64]) -> UInt64 {
    guard !samples.isEmpty else { return 0 }
    let s = samples.sorted()
    return s[(s.count - 1) / 2]
}

/// The p-th percentile (0...100) by nearest rank.
func percentile(_ samples: [UInt64], _ p: Double) -> UInt64 {
    guard !samples.isEmpty else { return 0 }
    let s = samples.sorted()
    let rank = Int((p / 100 * Double(s.count)).rounded(.up)) - 1
    return s[max(0, min(s.count - 1, rank))]
}
