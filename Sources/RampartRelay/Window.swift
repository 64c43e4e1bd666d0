import RampartStore

/// The relay's memory of one host's log: its last rows, contiguous. Every row of the host with
/// a sequence number in `(floor, head]` is in `rows`, so a subscriber at a position at or after
/// `floor` is served from here without a query; one behind it is caught up from the store.
struct Window {
    /// Rows after this position are all here.
    private(set) var floor: Int64
    /// The last position read (the last row's number, or more when rows were trimmed away).
    private(set) var head: Int64
    /// Ascending.
    private(set) var rows: [LogEntry] = []

    /// A window that knows nothing before `position` and everything through it (`rows` are
    /// all the host's rows after `position`, as read together).
    init(from position: Int64, rows: [LogEntry] = [], head: Int64? = nil) {
        floor = position
        self.rows = rows
        self.head = max(head ?? position, rows.last?.sequence ?? position)
    }

    /// Whether a subscriber that has everything through `position` can be served from here.
    func covers(_ position: Int64) -> Bool { position >= floor }

    /// The rows after `position` (which `covers`).
    func rows(after position: Int64) -> ArraySlice<LogEntry> {
        // Subscribers are nearly always at or near the head: search from the end.
        var i = rows.endIndex
        while i > rows.startIndex && rows[i - 1].sequence > position { i -= 1 }
        return rows[i...]
    }

    /// Appends rows read after `head` (in order), then forgets the oldest beyond `capacity`.
    mutating func append(_ entries: [LogEntry], head newHead: Int64, capacity: Int) {
        for e in entries where e.sequence > head {
            rows.append(e)
            head = e.sequence
        }
        head = max(head, newHead)
        if rows.count > capacity {
            let drop = rows.count - capacity
            floor = rows[drop - 1].sequence
            rows.removeFirst(drop)
        }
    }
}
