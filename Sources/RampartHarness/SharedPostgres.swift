import Foundation

/// One throwaway PostgreSQL cluster per test (or benchmark) process, started on first use and
/// destroyed when the process exits; each caller takes a fresh database on it, so that tests
/// stay independent without paying an initdb each (about a second).
public enum SharedPostgres {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var running: PostgresCluster?
    nonisolated(unsafe) private static var counter = 0

    /// The process's cluster, started.
    public static func cluster() throws -> PostgresCluster {
        try lock.withLock { () throws -> PostgresCluster in
            if let c = running {
                if !c.isRunning { try c.start() }
                return c
            }
            let c = try PostgresCluster(database: "postgres", maxConnections: 200)
            try c.start()
            running = c
            atexit { SharedPostgres.destroyAtExit() }
            return c
        }
    }

    /// A new, empty database on the shared cluster; returns its URL (`--store` form).
    public static func freshDatabase(_ prefix: String = "t") throws -> String {
        let c = try cluster()
        let name: String = lock.withLock {
            counter += 1
            return "\(prefix)_\(getpid())_\(counter)"
        }
        try c.createDatabase(name)
        return c.url(database: name)
    }

    private static func destroyAtExit() {
        let c = lock.withLock { () -> PostgresCluster? in
            defer { running = nil }
            return running
        }
        c?.destroy()
    }
}
