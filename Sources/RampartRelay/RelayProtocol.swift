import Foundation
import NIOCore
import RampartStore

/// The relay's wire protocol (docs/relay.md): one JSON object per line (`\n`), over a
/// long-lived TCP connection (TLS optional). Every message has an `op`; the other fields
/// depend on it.
///
/// Daemon → relay: `hello` (host, token, version), then `subscribe` (host, after), then `ack`
/// (seq) as it applies rows; or `status` instead of `hello` (counters only, no host names).
/// Relay → daemon: `welcome` (head), `rows` (head, rows in sequence order), `reload` (head: the
/// log was trimmed past the position, or the subscriber fell behind its buffer: reload the
/// whole document and continue after head), `error` (message; the relay then closes).
public struct RelayMessage: Codable, Sendable, Equatable {
    public enum Op: String, Codable, Sendable {
        case hello, subscribe, ack, status, welcome, rows, reload, error
    }

    /// One change-log row on the wire: its sequence number and the refresh's log text.
    public struct Row: Codable, Sendable, Equatable {
        public var seq: Int64
        public var refresh: String

        public init(seq: Int64, refresh: String) {
            self.seq = seq
            self.refresh = refresh
        }
    }

    public var op: Op
    public var version: Int?
    public var host: String?
    public var token: String?
    public var after: Int64?
    public var seq: Int64?
    public var head: Int64?
    /// `rows` and `reload`: the position the subscriber is at after this message (the next one
    /// starts `after` it). A message whose `after` is not where the subscriber is belongs to an
    /// earlier subscription and is ignored.
    public var through: Int64?
    public var rows: [Row]?
    public var message: String?
    /// `status` answers: the relay's counters (`RelayStatistics`).
    public var statistics: RelayStatistics?

    /// The protocol version this build speaks; a `hello` with another is refused.
    public static let version = 1
    /// The longest line either side accepts (a `rows` message is cut to fit well below it).
    public static let maxLineBytes = 4 << 20
    /// The longest line a relay accepts from a connection: a daemon sends `hello`, `subscribe`,
    /// `ack` and `status`, a few hundred bytes each, so a peer that has said nothing valid yet
    /// cannot make the relay buffer 4 MiB per connection.
    public static let maxDaemonLineBytes = 64 << 10

    public init(op: Op, version: Int? = nil, host: String? = nil, token: String? = nil, after: Int64? = nil, seq: Int64? = nil,
                head: Int64? = nil, through: Int64? = nil, rows: [Row]? = nil, message: String? = nil) {
        self.op = op
        self.version = version
        self.host = host
        self.token = token
        self.after = after
        self.seq = seq
        self.head = head
        self.through = through
        self.rows = rows
        self.message = message
    }

    public static func hello(host: String, token: String) -> Self { Self(op: .hello, version: version, host: host, token: token) }
    public static func subscribe(host: String, after: Int64) -> Self { Self(op: .subscribe, host: host, after: after) }
    public static func ack(_ seq: Int64) -> Self { Self(op: .ack, seq: seq) }
    public static func welcome(head: Int64) -> Self { Self(op: .welcome, head: head) }
    public static func error(_ message: String) -> Self { Self(op: .error, message: message) }

    /// Rows after `after` through `through` (a subscriber's continuity: each message starts
    /// where the one before ended); `head` is the host's last row as read.
    public static func rows(_ entries: some Collection<LogEntry>, after: Int64, through: Int64, head: Int64) -> Self {
        Self(op: .rows, after: after, head: head, through: through, rows: entries.map { Row(seq: $0.sequence, refresh: $0.refresh.logText) })
    }

    /// Reload: the rows after `after` are not coming; read the whole document, then follow
    /// after `through`.
    public static func reload(after: Int64, through: Int64) -> Self { Self(op: .reload, after: after, head: through, through: through) }

    /// The rows as log entries; nil if one names a refresh this version cannot read (the
    /// reader then reloads, as it does for such a row read from the store).
    public var entries: [LogEntry]? {
        var out: [LogEntry] = []
        for r in rows ?? [] {
            guard let refresh = Refresh(logText: r.refresh) else { return nil }
            out.append(LogEntry(sequence: r.seq, refresh: refresh))
        }
        return out
    }

    /// The message as one line (JSON and `\n`): written directly (`RelayLineCodec`), or by
    /// `JSONEncoder` for a status answer.
    public func line(allocator: ByteBufferAllocator) -> ByteBuffer {
        if let direct = RelayLineCodec.write(self, allocator: allocator) { return direct }
        // JSONEncoder cannot fail on this type (strings, integers, arrays).
        let data = (try? JSONEncoder().encode(self)) ?? Data(#"{"op":"error","message":"unencodable"}"#.utf8)
        var buffer = allocator.buffer(capacity: data.count + 1)
        buffer.writeBytes(data)
        buffer.writeInteger(UInt8(ascii: "\n"))
        return buffer
    }

    /// Parses one line (without its `\n`); the error says what is wrong. The flat messages
    /// every verb makes are read directly (`RelayLineCodec`), anything else by `JSONDecoder`.
    public static func parse(_ line: ByteBuffer) throws(RelayError) -> Self {
        if let direct = RelayLineCodec.read(line) { return direct }
        do {
            return try JSONDecoder().decode(Self.self, from: Data(line.readableBytesView))
        } catch {
            throw RelayError("not a relay message (one JSON object per line with a known \"op\"): \(String(decoding: line.readableBytesView.prefix(80), as: UTF8.self))")
        }
    }
}

/// The relay's counters, for its status line and `status` answers.
public struct RelayStatistics: Codable, Sendable, Equatable {
    /// Connections that said a valid `hello`, now.
    public var subscribers: Int = 0
    /// Hosts with a window in memory.
    public var hosts: Int = 0
    /// Change-log rows read from the store, and sent to subscribers, since start.
    public var rowsRead: Int = 0
    public var rowsSent: Int = 0
    /// Statements sent to the store for reads, since start.
    public var storeReads: Int = 0
    /// Acknowledged positions written to the store, and the statements that wrote them.
    public var acksWritten: Int = 0
    public var ackWrites: Int = 0
    /// Reload instructions sent: the log trimmed past a subscriber, or its buffer overflowed.
    public var reloadsTrimmed: Int = 0
    public var reloadsOverflow: Int = 0
    /// Connections refused: bad token, another host's subscription, over the cap, bad input.
    public var refused: Int = 0
    /// Subscribers whose last acknowledged row is behind the last row sent to them.
    public var behind: Int = 0
    /// The largest number of rows sent to one subscriber and not yet acknowledged.
    public var maxUnackedRows: Int = 0
    /// The store answers and the LISTEN is up.
    public var connected: Bool = false
    public init() {}
}

/// A refusal or failure of the relay or its client, with a message for the operator.
public struct RelayError: Error, CustomStringConvertible, Sendable, Equatable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Cuts a byte stream into lines (without their `\n`); a line longer than `maxLength` is an
/// error (the connection is then closed), so a peer cannot make the other side buffer without
/// bound.
public struct LineFrameDecoder: ByteToMessageDecoder {
    public typealias InboundOut = ByteBuffer
    public let maxLength: Int
    private var scanned = 0

    public init(maxLength: Int = RelayMessage.maxLineBytes) { self.maxLength = maxLength }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        let view = buffer.readableBytesView
        if let i = view.dropFirst(scanned).firstIndex(of: UInt8(ascii: "\n")) {
            let length = i - view.startIndex
            // Whole in one read or not, a line past the limit is refused.
            if length > maxLength { throw RelayError("a line longer than \(maxLength) bytes") }
            let line = buffer.readSlice(length: length)!
            buffer.moveReaderIndex(forwardBy: 1)
            scanned = 0
            context.fireChannelRead(wrapInboundOut(line))
            return .continue
        }
        scanned = view.count
        if scanned > maxLength { throw RelayError("a line longer than \(maxLength) bytes") }
        return .needMoreData
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        return .needMoreData
    }
}
