import Foundation
import NIOCore
@testable import RampartRelay
import Testing

/// The relay's direct line codec against Foundation's JSON coders: what it writes they read as
/// the same message, and it reads a line only as they would (else it leaves the line to them).
@Suite("Relay line codec")
struct RelayLineCodecTests {
    let allocator = ByteBufferAllocator()

    func buffer(_ bytes: [UInt8]) -> ByteBuffer {
        var b = allocator.buffer(capacity: bytes.count)
        b.writeBytes(bytes)
        return b
    }

    /// Foundation's reading of a line, the reference.
    func reference(_ bytes: [UInt8]) -> RelayMessage? { try? JSONDecoder().decode(RelayMessage.self, from: Data(bytes)) }

    func text(_ rng: inout SplitMix64) -> String {
        let pieces = ["hv1", "rules:web", "members:db", "\"", "\\", "\n", "\u{01}", "\u{1f}", "é", "🚀", " ", "/", "\u{7f}", ""]
        return (0..<Int.random(in: 0...5, using: &rng)).map { _ in pieces.randomElement(using: &rng)! }.joined()
    }

    func message(_ rng: inout SplitMix64) -> RelayMessage {
        func maybe<T>(_ make: () -> T) -> T? { Bool.random(using: &rng) ? make() : nil }
        let extremes: [Int64] = [0, 1, -1, .max, .min, 48_213]
        func int() -> Int64 { Bool.random(using: &rng) ? extremes.randomElement(using: &rng)! : Int64.random(in: -1_000_000...1_000_000, using: &rng) }
        var m = RelayMessage(op: [.hello, .subscribe, .ack, .status, .welcome, .rows, .reload, .error].randomElement(using: &rng)!)
        m.version = maybe { Int(int()) }
        m.host = maybe { text(&rng) }
        m.token = maybe { text(&rng) }
        m.after = maybe(int)
        m.seq = maybe(int)
        m.head = maybe(int)
        m.through = maybe(int)
        m.rows = maybe { (0..<Int.random(in: 0...4, using: &rng)).map { _ in RelayMessage.Row(seq: int(), refresh: text(&rng)) } }
        m.message = maybe { text(&rng) }
        return m
    }

    @Test func whatItWritesFoundationReadsAsTheSameMessage() throws {
        var rng = SplitMix64(state: 7)
        var direct = 0
        for _ in 0..<3_000 {
            let m = message(&rng)
            let line = try #require(RelayLineCodec.write(m, allocator: allocator))
            var bytes = Array(line.readableBytesView)
            #expect(bytes.last == UInt8(ascii: "\n"))
            bytes.removeLast()
            #expect(reference(bytes) == m, "\(String(decoding: bytes, as: UTF8.self))")
            #expect(try RelayMessage.parse(buffer(bytes)) == m)
            if let read = RelayLineCodec.read(buffer(bytes)) {
                #expect(read == m)
                direct += 1
            }
        }
        // Messages without escapes are read directly: the codec does serve.
        #expect(direct > 500, "\(direct)")
    }

    /// Lines Foundation rejects or reads differently: the codec leaves every one to it.
    @Test func itReadsNothingFoundationWouldReadOtherwise() {
        let cases = [
            #"{"op":"ack","seq":1,"seq":2}"#,           // a key twice
            #"{"op":"ack","seq":01}"#,                   // a leading zero
            #"{"op":"ack","seq":1.0}"#, #"{"op":"ack","seq":1e3}"#,
            #"{"op":"ack","seq":9223372036854775808}"#,  // past Int64
            #"{"op":"ack","seq":null}"#, #"{"op":"ack","unknown":1}"#,
            #"{"op":"rows","rows":[{"seq":1}]}"#, #"{"op":"rows","rows":[{"seq":1,"refresh":"a","x":1}]}"#,
            #"{"op":"rows","rows":[1]}"#, #"{"op":"rows","rows":[,]}"#, #"{"op":"rows","rows":[{"seq":1,"refresh":"a"},]}"#,
            #"{"op":"nosuch"}"#, #"{"seq":1}"#, #"{"op":"ack",}"#, #"{"op":"ack"} x"#, #"["op"]"#, "", "{",
            #"{"op":"hello","host":"a\u0041"}"#,         // an escape: Foundation's to read
            #"{"op":"status","statistics":{"subscribers":1}}"#,
            "{\"op\":\"hello\",\"host\":\"a\u{01}b\"}",  // a raw control character
        ]
        for c in cases {
            let bytes = Array(c.utf8)
            if let read = RelayLineCodec.read(buffer(bytes)) {
                Issue.record("read directly: \(c) as \(read)")
            }
        }
        // Invalid UTF-8 in a string.
        var bad = Array(#"{"op":"hello","host":"x"}"#.utf8)
        bad[bad.count - 3] = 0xff
        #expect(RelayLineCodec.read(buffer(bad)) == nil)
        #expect(reference(bad) == nil)
        // Spaces where JSON allows them are read, as Foundation reads them.
        let spaced = Array(" { \"op\" : \"ack\" , \"seq\" : -7 } ".utf8)
        #expect(RelayLineCodec.read(buffer(spaced)) == RelayMessage.ack(-7))
        #expect(reference(spaced) == RelayMessage.ack(-7))
    }

    /// Lines cut, spliced and with bytes flipped: whenever the codec reads one, Foundation
    /// reads the same message.
    @Test func mangledLinesAreReadAsFoundationReadsThemOrLeftToIt() {
        var rng = SplitMix64(state: 99)
        var directlyRead = 0
        for _ in 0..<20_000 {
            let m = message(&rng)
            var bytes = Array(RelayLineCodec.write(m, allocator: allocator)!.readableBytesView.dropLast())
            let symbols = Array(#"{}[]:,"\ 0-19eE.nulltruefalse"#.utf8) + [0xff, 0x01]
            for _ in 0..<Int.random(in: 1...3, using: &rng) where !bytes.isEmpty {
                let at = Int.random(in: 0..<bytes.count, using: &rng)
                switch Int.random(in: 0..<4, using: &rng) {
                case 0: bytes[at] = symbols.randomElement(using: &rng)!
                case 1: bytes.remove(at: at)
                case 2: bytes.insert(symbols.randomElement(using: &rng)!, at: at)
                default: bytes = Array(bytes[..<at])
                }
            }
            if let read = RelayLineCodec.read(buffer(bytes)) {
                directlyRead += 1
                #expect(reference(bytes) == read, "\(String(decoding: bytes, as: UTF8.self))")
            }
        }
        // Some mangled lines stay valid (a digit changed, a space added): the check did run.
        #expect(directlyRead > 100, "\(directlyRead)")
    }
}
