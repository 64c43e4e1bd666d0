import Foundation

/// Self-contained SVG charts (no external tools): log-log line charts of latency.
enum Chart {
    struct Series {
        var name: String
        var color: String
        var points: [(x: Int, ns: UInt64)]
    }

    /// Membership-change latency (median) against instances per host, for Rampart and the
    /// baselines; log-scale on both axes. Points not measured (0) are left out.
    static func membershipLatency(_ points: [MembershipPoint], footnote: String) -> String {
        func series(_ name: String, _ color: String, _ value: (MembershipPoint) -> UInt64) -> Series {
            Series(name: name, color: color, points: points.compactMap { p in value(p) > 0 ? (p.instances, value(p)) : nil })
        }
        return lineChart(
            title: "Membership change: latency vs instances per host (median, log scales)",
            series: [
                series("Rampart, slot layout (the default), in-process (event → committed)", "#1b7837", \.slots),
                series("Rampart, instance-chains layout (before)", "#5aae61", \.rampart),
                series("nft add element (one process)", "#2166ac", \.nftAddElement),
                series("classic: iptables-legacy-restore, full re-load", "#b2182b", \.legacyRestore),
                series("classic: iptables-nft-restore, full re-load", "#e08214", \.nftRestore),
            ].filter { !$0.points.isEmpty },
            target: (1_000_000, "target ≤ 1 ms"), footnote: footnote)
    }

    static func lineChart(title: String, series: [Series], target: (ns: UInt64, label: String)?, footnote: String = "") -> String {
        let width = 860.0, height = 480.0
        let left = 80.0, right = 330.0, top = 50.0, bottom = 60.0
        let plotW = width - left - right, plotH = height - top - bottom
        let xs = series.flatMap { $0.points.map { Double($0.x) } }
        var ys = series.flatMap { $0.points.map { Double($0.ns) } }
        if let t = target { ys.append(Double(t.ns)) }
        let xMin = log10((xs.min() ?? 100) / 1.6), xMax = log10((xs.max() ?? 5_000) * 1.6)
        let yMin = floor(log10(ys.min() ?? 1_000)), yMax = ceil(log10(ys.max() ?? 1e9))
        func px(_ x: Double) -> Double { left + (log10(x) - xMin) / (xMax - xMin) * plotW }
        func py(_ ns: Double) -> Double { top + plotH - (log10(ns) - yMin) / max(yMax - yMin, 1) * plotH }
        func f(_ v: Double) -> String { String(format: "%.1f", v) }
        func esc(_ s: String) -> String {
            s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
        }

        var out = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" viewBox="0 0 \(Int(width)) \(Int(height))" font-family="Helvetica, Arial, sans-serif" font-size="12">
        <rect width="100%" height="100%" fill="white"/>
        <text x="\(f(width / 2))" y="26" text-anchor="middle" font-size="15" font-weight="bold">\(esc(title))</text>

        """
        // Horizontal grid: one line per decade, lighter lines at 2× and 5×.
        var decade = yMin
        while decade <= yMax {
            let y = py(pow(10, decade))
            out += "<line x1=\"\(f(left))\" y1=\"\(f(y))\" x2=\"\(f(left + plotW))\" y2=\"\(f(y))\" stroke=\"#cccccc\"/>\n"
            out += "<text x=\"\(f(left - 8))\" y=\"\(f(y + 4))\" text-anchor=\"end\">\(esc(formatDuration(UInt64(pow(10, decade)))))</text>\n"
            if decade < yMax {
                for m in [2.0, 5.0] {
                    let ym = py(m * pow(10, decade))
                    out += "<line x1=\"\(f(left))\" y1=\"\(f(ym))\" x2=\"\(f(left + plotW))\" y2=\"\(f(ym))\" stroke=\"#eeeeee\"/>\n"
                }
            }
            decade += 1
        }
        // Vertical ticks at the measured host sizes.
        for x in Set(xs).sorted() {
            let xp = px(x)
            out += "<line x1=\"\(f(xp))\" y1=\"\(f(top))\" x2=\"\(f(xp))\" y2=\"\(f(top + plotH))\" stroke=\"#eeeeee\"/>\n"
            let label = x >= 1_000 ? "\(Int(x) / 1_000)k" : "\(Int(x))"
            out += "<text x=\"\(f(xp))\" y=\"\(f(top + plotH + 18))\" text-anchor=\"middle\">\(label)</text>\n"
        }
        out += "<rect x=\"\(f(left))\" y=\"\(f(top))\" width=\"\(f(plotW))\" height=\"\(f(plotH))\" fill=\"none\" stroke=\"#333333\"/>\n"
        out += "<text x=\"\(f(left + plotW / 2))\" y=\"\(f(height - 24))\" text-anchor=\"middle\">instances per host (log scale)</text>\n"
        out += "<text x=\"\(f(left))\" y=\"\(f(height - 6))\" font-size=\"10\" fill=\"#555555\">\(esc(footnote))</text>\n"
        out += "<text transform=\"translate(18 \(f(top + plotH / 2))) rotate(-90)\" text-anchor=\"middle\">latency per change (log scale)</text>\n"
        if let t = target {
            let y = py(Double(t.ns))
            out += "<line x1=\"\(f(left))\" y1=\"\(f(y))\" x2=\"\(f(left + plotW))\" y2=\"\(f(y))\" stroke=\"#1b7837\" stroke-dasharray=\"6 4\"/>\n"
            out += "<text x=\"\(f(left + 6))\" y=\"\(f(y - 5))\" fill=\"#1b7837\">\(esc(t.label))</text>\n"
        }
        for s in series {
            let pts = s.points.map { "\(f(px(Double($0.x)))),\(f(py(Double($0.ns))))" }.joined(separator: " ")
            out += "<polyline points=\"\(pts)\" fill=\"none\" stroke=\"\(s.color)\" stroke-width=\"2\"/>\n"
            for p in s.points {
                let x = px(Double(p.x)), y = py(Double(p.ns))
                out += "<circle cx=\"\(f(x))\" cy=\"\(f(y))\" r=\"4\" fill=\"\(s.color)\"/>\n"
                out += "<text x=\"\(f(x + 7))\" y=\"\(f(y - 7))\" fill=\"\(s.color)\" font-size=\"11\" stroke=\"white\" stroke-width=\"3\" paint-order=\"stroke\">\(esc(formatDuration(p.ns)))</text>\n"
            }
        }
        // Legend, right of the plot.
        var ly = top + 10
        for s in series {
            let lx = left + plotW + 20
            out += "<line x1=\"\(f(lx))\" y1=\"\(f(ly))\" x2=\"\(f(lx + 24))\" y2=\"\(f(ly))\" stroke=\"\(s.color)\" stroke-width=\"2\"/>\n"
            out += "<circle cx=\"\(f(lx + 12))\" cy=\"\(f(ly))\" r=\"4\" fill=\"\(s.color)\"/>\n"
            out += "<text x=\"\(f(lx + 32))\" y=\"\(f(ly + 4))\">\(esc(s.name))</text>\n"
            ly += 24
        }
        return out + "</svg>\n"
    }
}
