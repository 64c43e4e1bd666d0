import Foundation
import RampartStore

/// Connections to the store shared by the API's requests: a request borrows one for each
/// transaction and gives it back, so that as many transactions run at once as there are
/// connections. One `SQLStore` serialises its callers behind its lock (it is one connection),
/// which made every request wait for every other one, whatever the store: eight clients got
/// no more from PostgreSQL than one (measured with `rampart-bench ec2`, docs/ec2-api.md).
///
/// SQLite: readers run side by side (WAL), writers take turns on the database's write lock
/// (`BEGIN IMMEDIATE`, with SQLite's busy timeout). PostgreSQL: each connection is a server
/// backend; conflicting writers are retried by the store (serialization failures).
public final class StorePool: @unchecked Sendable {
    /// The first connection: for callers outside a request (tests, start-up checks).
    public let primary: SQLStore
    private let stores: [SQLStore]
    private var free: [Int]
    private let condition = NSCondition()

    /// A pool over `stores` (at least one), all connections to the same store.
    public init(_ stores: [SQLStore]) {
        precondition(!stores.isEmpty, "a store pool needs a connection")
        self.stores = stores
        primary = stores[0]
        free = Array(stores.indices.reversed())
    }

    /// How many connections the pool holds.
    public var count: Int { stores.count }

    /// Runs `body` with a connection nobody else uses meanwhile, waiting for one if all are busy.
    func with<T>(_ body: (SQLStore) throws -> T) rethrows -> T {
        condition.lock()
        while free.isEmpty { condition.wait() }
        let i = free.removeLast()
        condition.unlock()
        defer {
            condition.lock()
            free.append(i)
            condition.signal()
            condition.unlock()
        }
        return try body(stores[i])
    }
}
