// swift-tools-version: 6.1
// Rampart: security-group enforcement for hypervisors, programmed into nftables over netlink.
import PackageDescription

let package = Package(
    name: "Rampart",
    platforms: [.macOS(.v13)],
    products: [
        .library(name: "RampartNetlink", targets: ["RampartNetlink"]),
        .library(name: "RampartCore", targets: ["RampartCore"]),
        .executable(name: "rampart", targets: ["rampart"]),
        .executable(name: "rampart-bench", targets: ["rampart-bench"]),
        .executable(name: "rampart-demo", targets: ["rampart-demo"]),
        .executable(name: "rampartd", targets: ["rampartd"]),
        .executable(name: "rampart-api", targets: ["rampart-api"]),
        .executable(name: "rampart-relay", targets: ["rampart-relay"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/x-sheep/swift-property-based.git", from: "2.0.1"),
        // rampartd: HTTP over a Unix socket, logs, metrics, graceful shutdown.
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        // The shared store of a multi-hypervisor cloud (PostgreSQL), and LISTEN/NOTIFY wake-ups.
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        // The EC2 API: HMAC-SHA256 and SHA-256 for Signature Version 4 (already pulled in by postgres-nio).
        .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.3"),
    ],
    targets: [
        // The two Linux calls a Swift import of Glibc cannot see (setns, memfd_create).
        .target(name: "CRampartSystem"),
        // The system layer: typed errno, the syscall funnel, network namespaces, the one process
        // spawner, Unix socket addresses. The only place errno becomes text.
        .target(name: "RampartSystem", dependencies: ["CRampartSystem"]),
        // C shim over libnftnl/libmnl: only what Swift cannot import directly (macros,
        // attribute iteration, the batch-begin message with a generation id).
        .target(
            name: "CNetfilter",
            path: "CShims",
            linkerSettings: [.linkedLibrary("nftnl"), .linkedLibrary("mnl")]
        ),
        // Typed nftables objects and batches, sent over netlink; no process is ever started.
        .target(name: "RampartNetlink", dependencies: ["CNetfilter", "RampartSystem"]),
        // The pure core: document, validation, model, compiler, differ, events.
        .target(name: "RampartCore"),
        // Reference structures for tests and benchmarks only, never linked into rampart or
        // rampartd (as NIO keeps NIOEmbedded apart): the cloud-wide fan-out index, an oracle
        // for the store's SQL fan-out and the subject of the 1M-instance benchmark.
        .target(name: "RampartCoreTestSupport", dependencies: ["RampartCore"]),
        // C shim over libipset: membership deltas over netlink, in-process.
        .target(
            name: "CIPSet",
            path: "CIPSetShim",
            linkerSettings: [.linkedLibrary("ipset")]
        ),
        // The iptables backend: the same IR as iptables-restore --noflush input and ipsets.
        .target(name: "RampartIPTables", dependencies: ["RampartCore", "RampartSystem", "CIPSet"]),
        // The nftables backend: IR ⇄ netlink objects, plans as one batch, read-back, drift repair.
        .target(name: "RampartNFTables", dependencies: [
            "RampartCore", "RampartNetlink",
            // HMAC-SHA256: the slot layout's group keys (Layout.swift).
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        // Revocation, for either backend: after a commit that narrowed access, the conntrack
        // entries the committed IR no longer allows are found and deleted (ctnetlink).
        .target(name: "RampartConntrack", dependencies: ["RampartCore", "RampartNetlink", "RampartSystem"]),
        // The backend chosen by `--backend` and its options, for the CLI and the daemon alike.
        .target(name: "RampartBackends", dependencies: [
            "RampartCore", "RampartNFTables", "RampartIPTables", "RampartConntrack", "RampartNetlink", "RampartSystem",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        // How a routed hypervisor wires an instance (and a fabric routes to it) with `ip`: the
        // one description the harness and rampart-api's netns compute driver both follow.
        .target(name: "RampartWiring", dependencies: ["RampartSystem"]),
        // Network-namespace fixtures for tests, benchmarks and the demo (uses `ip`, never on
        // Rampart's own kernel path).
        .target(name: "RampartHarness", dependencies: ["RampartSystem", "RampartWiring"]),
        // SQLite from the system (libsqlite3-dev), for the embedded store.
        .systemLibrary(name: "CSQLite"),
        // The controller's store: groups, rules, instances, hosts; per-host documents; fan-out;
        // one SQL body over SQLite (embedded) or PostgreSQL (a cloud, with its per-host change log).
        .target(name: "RampartStore", dependencies: [
            "RampartCore", "RampartSystem", "CSQLite",
            .product(name: "PostgresNIO", package: "postgres-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // What the HTTP servers (the daemon's API, the EC2 API) share: idle deadlines, the connection cap.
        .target(name: "RampartHTTP", dependencies: [
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
        ]),
        // The daemon's core: engine + backend, coalescing refresh queue, resync, status, metrics,
        // and the HTTP/JSON API over a Unix socket (SwiftNIO).
        .target(
            name: "RampartDaemon",
            dependencies: [
                "RampartCore", "RampartConntrack", "RampartStore", "RampartSystem", "RampartHTTP",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // rampartd: the hypervisor daemon.
        .executableTarget(
            name: "rampartd",
            dependencies: [
                "RampartDaemon", "RampartBackends", "RampartConntrack", "RampartNetlink", "RampartSystem", "RampartRelay",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The CLI: apply, diff, show, flush, and the controller verbs (store + fan-out + daemon calls).
        .executableTarget(
            name: "rampart",
            dependencies: [
                "RampartCore", "RampartBackends", "RampartNFTables", "RampartNetlink", "RampartIPTables", "RampartConntrack", "RampartStore", "RampartSystem",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // The EC2 Query API (2016-11-15) over the store: forms, XML, Signature Version 4, the
        // security-group actions, and its HTTP server (SwiftNIO). docs/ec2-api.md.
        .target(name: "RampartEC2", dependencies: [
            "RampartCore", "RampartStore", "RampartHTTP", "RampartSystem",
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // rampart-api's `--compute netns`: an instance becomes a namespace and a veth on its
        // hypervisor's namespace (demos and tests). docs/ec2-api.md, "A cloud you can touch".
        .target(name: "RampartCompute", dependencies: ["RampartCore", "RampartEC2", "RampartStore", "RampartSystem", "RampartWiring"]),
        // rampart-api: the EC2 API server.
        .executableTarget(name: "rampart-api", dependencies: [
            "RampartEC2", "RampartStore", "RampartCompute", "RampartWiring",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        // The change-log relay (docs/relay.md): one LISTEN and one log reader streaming each
        // daemon its host's rows over TCP (optionally TLS), and the daemon's side of it.
        .target(name: "RampartRelay", dependencies: [
            "RampartCore", "RampartStore", "RampartHTTP", "RampartSystem",
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // rampart-relay: the relay server.
        .executableTarget(name: "rampart-relay", dependencies: [
            "RampartRelay", "RampartStore",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // The demo hypervisor behind scripts/demo.
        .executableTarget(name: "rampart-demo", dependencies: ["RampartHarness"]),
        .executableTarget(
            name: "rampart-bench",
            dependencies: [
                "RampartNetlink", "RampartCore", "RampartCoreTestSupport", "RampartNFTables", "RampartConntrack", "RampartHarness", "RampartIPTables",
                "RampartStore", "RampartDaemon", "RampartBackends", "RampartSystem", "RampartRelay",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // Test doubles kept out of the production modules (as NIO keeps NIOEmbedded apart): the
        // in-memory nftables (RecordingNFTables) and a scripted netlink transport that replays
        // kernel replies, so reply handling is tested without root.
        .target(name: "RampartTestSupport", dependencies: ["RampartNetlink", "RampartSystem", "CNetfilter"]),
        .testTarget(name: "RampartSystemTests", dependencies: ["RampartSystem"]),
        .testTarget(name: "RampartNetlinkTests", dependencies: ["RampartNetlink", "RampartSystem", "RampartHarness", "RampartTestSupport", "RampartCoreTestSupport"]),
        .testTarget(name: "RampartHarnessTests", dependencies: ["RampartHarness", "RampartSystem"]),
        // Kernel suites (tagged `.kernel`) run only as root; the rest run anywhere.
        .testTarget(
            name: "RampartNFTablesTests",
            dependencies: ["RampartNFTables", "RampartIPTables", "RampartConntrack", "RampartCore", "RampartNetlink", "RampartHarness", "RampartSystem", "RampartTestSupport", "RampartCoreTestSupport"]
        ),
        .testTarget(name: "RampartIPTablesTests", dependencies: ["RampartIPTables", "RampartCore", "RampartHarness", "RampartSystem"]),
        .testTarget(name: "RampartEC2Tests", dependencies: ["RampartEC2", "RampartStore", "RampartCore", "RampartHarness", "RampartCompute", "RampartCoreTestSupport", "RampartSystem"]),
        .testTarget(name: "RampartStoreTests", dependencies: ["RampartStore", "RampartCore", "RampartCoreTestSupport", "RampartSystem", "RampartHarness"]),
        .testTarget(
            name: "RampartDaemonTests",
            dependencies: [
                "RampartDaemon", "RampartBackends", "RampartStore", "RampartCore", "RampartNFTables", "RampartIPTables", "RampartConntrack", "RampartNetlink", "RampartHarness",
                "RampartSystem", "RampartTestSupport", "RampartRelay",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "RampartCoreTests",
            dependencies: [
                "RampartCore", "RampartCoreTestSupport", "RampartSystem",
                .product(name: "PropertyBased", package: "swift-property-based"),
            ]
        ),
    ]
)
