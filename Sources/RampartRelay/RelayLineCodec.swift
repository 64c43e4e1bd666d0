import NIOCore

/// The relay's JSON lines, written and read without Foundation's JSON coders for the messages
/// every verb makes (`rows` and `ack`, and the others that share their flat shape).
///
/// Why: a relay writes one `rows` line per notified subscriber and reads one `ack` back, and a
/// daemon does the reverse; through `JSONEncoder`/`JSONDecoder` (a coder made per message, a
/// `Data` copy each way) those lines cost ~31–55 µs per notified host, about a third of a
/// relay's CPU per verb in `rampart-bench fleet`; this codec, 4.6× less (docs/relay.md). The wire format is unchanged: what `write` produces,
/// `JSONDecoder` reads as the same message, and `read` answers only for lines it can read
/// exactly as `JSONDecoder` would; for anything else (a `statistics` object, escapes, `null`,
/// numbers with a fraction or exponent, unknown or repeated keys) it answers nil and the caller
/// falls back to `JSONDecoder`, which reads the line or says what is wrong with it.
enum RelayLineCodec {
    /// `message` as one JSON line (with its `\n`); nil for a message with `statistics`
    /// (status answers: rare, left to `JSONEncoder`).
    static func write(_ m: RelayMessage, allocator: ByteBufferAllocator) -> ByteBuffer? {
        guard m.statistics == nil else { return nil }
        var capacity = 64 + (m.host?.utf8.count ?? 0) + (m.token?.utf8.count ?? 0) + (m.message?.utf8.count ?? 0)
        for r in m.rows ?? [] { capacity += 40 + r.refresh.utf8.count }
        var b = allocator.buffer(capacity: capacity)
        b.writeStaticString(#"{"op":""#)
        b.writeString(m.op.rawValue)
        b.writeInteger(UInt8(ascii: "\""))
        func integer(_ key: StaticString, _ value: Int64?) {
            guard let value else { return }
            b.writeStaticString(key)
            b.writeString(String(value))
        }
        func string(_ key: StaticString, _ value: String?) {
            guard let value else { return }
            b.writeStaticString(key)
            writeJSONString(value, to: &b)
        }
        integer(#","version":"#, m.version.map(Int64.init))
        string(#","host":"#, m.host)
        string(#","token":"#, m.token)
        integer(#","after":"#, m.after)
        integer(#","seq":"#, m.seq)
        integer(#","head":"#, m.head)
        integer(#","through":"#, m.through)
        if let rows = m.rows {
            b.writeStaticString(#","rows":["#)
            for (i, r) in rows.enumerated() {
                b.writeStaticString(i == 0 ? #"{"seq":"# : #",{"seq":"#)
                b.writeString(String(r.seq))
                b.writeStaticString(#","refresh":"#)
                writeJSONString(r.refresh, to: &b)
                b.writeInteger(UInt8(ascii: "}"))
            }
            b.writeInteger(UInt8(ascii: "]"))
        }
        string(#","message":"#, m.message)
        b.writeStaticString("}\n")
        return b
    }

    /// A JSON string: `"` and `\` escaped, control characters as `\u00XX`; everything else as
    /// its UTF-8 bytes (a Swift string is valid UTF-8).
    static func writeJSONString(_ s: String, to b: inout ByteBuffer) {
        b.writeInteger(UInt8(ascii: "\""))
        let utf8 = s.utf8
        if !utf8.contains(where: { $0 < 0x20 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }) {
            b.writeString(s)
        } else {
            let hex = Array("0123456789abcdef".utf8)
            for c in utf8 {
                switch c {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"):
                    b.writeInteger(UInt8(ascii: "\\"))
                    b.writeInteger(c)
                case 0..<0x20:
                    b.writeStaticString("\\u00")
                    b.writeInteger(hex[Int(c >> 4)])
                    b.writeInteger(hex[Int(c & 15)])
                default:
                    b.writeInteger(c)
                }
            }
        }
        b.writeInteger(UInt8(ascii: "\""))
    }

    /// The message a line holds, if it is one of the flat messages this reader knows to read
    /// exactly as `JSONDecoder` does; nil otherwise (not an error: decode it with `JSONDecoder`).
    static func read(_ line: ByteBuffer) -> RelayMessage? {
        line.withUnsafeReadableBytes { raw in
            var p = Reader(bytes: raw)
            return p.message()
        }
    }

    private struct Reader {
        let bytes: UnsafeRawBufferPointer
        var i = 0

        init(bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

        private var current: UInt8? { i < bytes.count ? bytes[i] : nil }

        private mutating func skipSpace() {
            while let c = current, c == 0x20 || c == 0x09 || c == 0x0a || c == 0x0d { i += 1 }
        }

        private mutating func expect(_ c: UInt8) -> Bool {
            skipSpace()
            guard current == c else { return false }
            i += 1
            return true
        }

        /// A string without escapes, of valid UTF-8 and no control characters.
        private mutating func string() -> String? {
            guard expect(UInt8(ascii: "\"")) else { return nil }
            let start = i
            while let c = current, c != UInt8(ascii: "\"") {
                if c == UInt8(ascii: "\\") || c < 0x20 { return nil }
                i += 1
            }
            guard current != nil else { return nil }
            let text = String(validating: UnsafeRawBufferPointer(rebasing: bytes[start..<i]), as: UTF8.self)
            i += 1
            return text
        }

        /// An integer as JSON writes one (no leading zero, no fraction or exponent) that fits.
        private mutating func integer() -> Int64? {
            skipSpace()
            var negative = false
            if current == UInt8(ascii: "-") {
                negative = true
                i += 1
            }
            let start = i
            var value: Int64 = 0
            while let c = current, c >= UInt8(ascii: "0"), c <= UInt8(ascii: "9") {
                let digit = Int64(c - UInt8(ascii: "0"))
                let (times, o1) = value.multipliedReportingOverflow(by: 10)
                let (next, o2) = negative ? times.subtractingReportingOverflow(digit) : times.addingReportingOverflow(digit)
                guard !o1, !o2 else { return nil }
                value = next
                i += 1
            }
            let digits = i - start
            guard digits > 0, !(digits > 1 && bytes[start] == UInt8(ascii: "0")) else { return nil }
            // A fraction or an exponent: not an integer as written here.
            if let c = current, c == UInt8(ascii: ".") || c == UInt8(ascii: "e") || c == UInt8(ascii: "E") { return nil }
            return value
        }

        private mutating func row() -> RelayMessage.Row? {
            guard expect(UInt8(ascii: "{")) else { return nil }
            var seq: Int64?, refresh: String?
            for k in 0..<2 {
                if k == 1 { guard expect(UInt8(ascii: ",")) else { return nil } }
                guard let key = string(), expect(UInt8(ascii: ":")) else { return nil }
                switch key {
                case "seq" where seq == nil: seq = integer()
                case "refresh" where refresh == nil: refresh = string()
                default: return nil
                }
            }
            guard expect(UInt8(ascii: "}")), let seq, let refresh else { return nil }
            return RelayMessage.Row(seq: seq, refresh: refresh)
        }

        private mutating func rows() -> [RelayMessage.Row]? {
            guard expect(UInt8(ascii: "[")) else { return nil }
            var out: [RelayMessage.Row] = []
            if expect(UInt8(ascii: "]")) { return out }
            repeat {
                guard let r = row() else { return nil }
                out.append(r)
            } while expect(UInt8(ascii: ","))
            return expect(UInt8(ascii: "]")) ? out : nil
        }

        mutating func message() -> RelayMessage? {
            guard expect(UInt8(ascii: "{")) else { return nil }
            var op: RelayMessage.Op?
            var m = RelayMessage(op: .error)
            var seen = Set<String>()
            if !expect(UInt8(ascii: "}")) {
                repeat {
                    guard let key = string(), seen.insert(key).inserted, expect(UInt8(ascii: ":")) else { return nil }
                    switch key {
                    case "op":
                        guard let text = string(), let o = RelayMessage.Op(rawValue: text) else { return nil }
                        op = o
                    case "version":
                        guard let v = integer(), let small = Int(exactly: v) else { return nil }
                        m.version = small
                    case "host": guard let v = string() else { return nil }; m.host = v
                    case "token": guard let v = string() else { return nil }; m.token = v
                    case "message": guard let v = string() else { return nil }; m.message = v
                    case "after": guard let v = integer() else { return nil }; m.after = v
                    case "seq": guard let v = integer() else { return nil }; m.seq = v
                    case "head": guard let v = integer() else { return nil }; m.head = v
                    case "through": guard let v = integer() else { return nil }; m.through = v
                    case "rows": guard let v = rows() else { return nil }; m.rows = v
                    default: return nil
                    }
                } while expect(UInt8(ascii: ","))
                guard expect(UInt8(ascii: "}")) else { return nil }
            }
            skipSpace()
            guard i == bytes.count, let op else { return nil }
            m.op = op
            return m
        }
    }
}
