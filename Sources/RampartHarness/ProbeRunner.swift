import Foundation
import RampartSystem

/// A probe with its namespaces resolved (by the topology).
struct ResolvedProbe {
    var probe: Probe
    var sourceNamespace: String
    /// Where the destination address lives (the listener's namespace); nil for ICMP.
    var destinationNamespace: String?
}

/// Runs probes concurrently from one thread: all sockets are non-blocking and driven by one
/// poll() loop, and ping processes are reaped with waitpid(WNOHANG) as they exit.
enum ProbeRunner {
    private final class Client {
        let probe: Probe
        let token = tokenCounter.next()
        var start = 0.0
        var deadline = 0.0
        var fd: Int32 = -1
        var ping: ChildProcess?
        var connected = false
        var buffer: [UInt8] = []
        var result: ProbeResult?

        init(_ probe: Probe) {
            self.probe = probe
        }

        /// Starts the clock.
        func begin() {
            start = now()
            // ping enforces its own timeout; give the process a grace period to exit.
            deadline = start + probe.timeout + (probe.kind == .icmp ? 2 : 0)
        }

        func finish(passed: Bool, delivered: Bool, answered: Bool, seen: String?, _ detail: String) {
            guard result == nil else { return }
            result = ProbeResult(probe: probe, passed: passed, delivered: delivered, answered: answered,
                                 seenSource: seen, detail: detail, elapsed: now() - start)
            if fd >= 0 { close(fd); fd = -1 }
        }
    }

    /// Probes in flight at once: far below the usual 1024 open files.
    static let maxInFlight = 256
    /// ping processes at once.
    static let maxPings = 64

    static func run(_ probes: [ResolvedProbe], server: EchoServer) throws -> [ProbeResult] {
        // Listeners first, so that no probe can race its listener.
        for p in probes {
            guard let ns = p.destinationNamespace else { continue }
            switch p.probe.kind {
            case .tcp(let port): try server.ensureListener(namespace: ns, stream: true, address: p.probe.to, port: port)
            case .udp(let port): try server.ensureListener(namespace: ns, stream: false, address: p.probe.to, port: port)
            case .icmp: break
            }
        }
        let clients = probes.map { Client($0.probe) }
        defer {
            for c in clients {
                if c.fd >= 0 { close(c.fd) }
                if let ping = c.ping { ping.signal(SIGKILL); _ = try? ping.wait() }
            }
        }
        // At most `maxInFlight` at once (each holds a socket, and the listener side one more),
        // started in order as earlier ones finish.
        var next = 0
        var running: [Client] = []
        while true {
            running.removeAll { $0.result != nil }
            while next < clients.count && running.count < maxInFlight {
                if clients[next].probe.kind == .icmp && running.count(where: { $0.ping != nil }) >= maxPings { break }
                clients[next].begin()
                try start(clients[next], in: probes[next].sourceNamespace, server: server)
                if clients[next].result == nil { running.append(clients[next]) }
                next += 1
            }
            let active = running
            if active.isEmpty { if next == clients.count { break } else { continue } }
            // ping processes are polled with waitpid(WNOHANG) every 10 ms; sockets by poll().
            let pinging = active.contains { $0.ping != nil }
            let sockets = active.filter { $0.fd >= 0 }
            var fds = sockets.map { c in
                pollfd(fd: c.fd, events: Int16(c.probe.kind.isTCP && !c.connected ? POLLOUT : POLLIN), revents: 0)
            }
            var wait = max(0, (active.map(\.deadline).min()! - now()) * 1000)
            if pinging { wait = min(wait, 10) }
            _ = poll(&fds, nfds_t(fds.count), Int32(wait.rounded(.up)))
            for (c, p) in zip(sockets, fds) where p.revents != 0 {
                step(c, revents: p.revents, server: server)
            }
            for c in active {
                guard let ping = c.ping, let code = try ping.poll() else { continue }
                c.ping = nil
                c.finish(passed: code == 0, delivered: code == 0, answered: code == 0, seen: nil,
                         code == 0 ? "echo reply" : "no reply (ping exit \(code))")
            }
            let t = now()
            for c in active where c.result == nil && t >= c.deadline {
                expire(c, server: server)
            }
        }
        return clients.map { $0.result! }
    }

    private static func start(_ c: Client, in namespace: String, server: EchoServer) throws {
        let probe = c.probe
        switch probe.kind {
        case .icmp:
            try spawnPing(c, in: namespace)
        case .tcp(let port), .udp(let port):
            let stream = probe.kind.isTCP
            let destination = try SocketAddress(probe.to, port: port)
            c.fd = try makeSocket(in: namespace, family: destination.family, stream: stream)
            if let source = probe.source { try bindSource(c.fd, source, family: destination.family) }
            let rc = destination.withPointer { connect(c.fd, $0, $1) }
            let e = errno
            if stream {
                if rc == 0 { c.connected = true; sendToken(c) }
                else if e != EINPROGRESS { c.finish(passed: false, delivered: false, answered: false, seen: nil, errnoText(e)) }
            } else {
                guard rc == 0 else {
                    c.finish(passed: false, delivered: false, answered: false, seen: nil, errnoText(e))
                    return
                }
                if !sendAll(c.fd, c.token) {
                    c.finish(passed: false, delivered: false, answered: false, seen: nil, "send: " + errnoText(errno))
                }
            }
        }
    }

    private static func sendToken(_ c: Client) {
        if !sendAll(c.fd, c.token + "\n") {
            c.finish(passed: false, delivered: false, answered: false, seen: nil, "send: " + errnoText(errno))
        }
    }

    private static func step(_ c: Client, revents: Int16, server: EchoServer) {
        switch c.probe.kind {
        case .icmp:
            break
        case .tcp:
            if !c.connected {
                var error: Int32 = 0
                var length = socklen_t(MemoryLayout<Int32>.size)
                getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &error, &length)
                if error != 0 {
                    c.finish(passed: false, delivered: false, answered: false, seen: nil, errnoText(error))
                    return
                }
                c.connected = true
                sendToken(c)
                return
            }
            var chunk = [UInt8](repeating: 0, count: 512)
            let n = read(c.fd, &chunk, chunk.count)
            if n > 0 {
                c.buffer += chunk[0..<n]
                if String(decoding: c.buffer, as: UTF8.self).contains(c.token + "\n") {
                    c.finish(passed: true, delivered: true, answered: true, seen: server.seenSource(of: c.token), "echoed")
                }
            } else if n == 0 || errno != EAGAIN {
                let why = n == 0 ? "closed by peer" : errnoText(errno)
                let seen = server.seenSource(of: c.token)
                c.finish(passed: false, delivered: seen != nil, answered: false, seen: seen, why)
            }
        case .udp:
            var chunk = [UInt8](repeating: 0, count: 2048)
            let n = recv(c.fd, &chunk, chunk.count, 0)
            if n > 0 {
                if String(decoding: chunk[0..<n], as: UTF8.self) == c.token {
                    c.finish(passed: true, delivered: true, answered: true, seen: server.seenSource(of: c.token), "echoed")
                }
            } else if n < 0 && errno != EAGAIN {
                // An ICMP error (port/host unreachable) came back.
                let why = errnoText(errno)
                let seen = server.seenSource(of: c.token)
                c.finish(passed: seen != nil, delivered: seen != nil, answered: false, seen: seen, why)
            }
        }
    }

    private static func expire(_ c: Client, server: EchoServer) {
        switch c.probe.kind {
        case .icmp:
            if let ping = c.ping { ping.signal(SIGKILL); _ = try? ping.wait(); c.ping = nil }
            c.finish(passed: false, delivered: false, answered: false, seen: nil, "ping did not exit")
        case .tcp:
            let seen = server.seenSource(of: c.token)
            c.finish(passed: false, delivered: seen != nil, answered: false, seen: seen,
                     c.connected ? "no echo (timeout)" : "timeout")
        case .udp:
            let seen = server.seenSource(of: c.token)
            c.finish(passed: seen != nil, delivered: seen != nil, answered: false, seen: seen,
                     seen != nil ? "delivered, no reply" : "timeout")
        }
    }

    /// Starts `ping -c 1` inside `namespace`; the run loop reaps it.
    private static func spawnPing(_ c: Client, in namespace: String) throws {
        let probe = c.probe
        var arguments = ["ping", isIPv6(probe.to) ? "-6" : "-4", "-n", "-q", "-c", "1",
                         "-W", String(format: "%.3f", probe.timeout)]
        if let source = probe.source { arguments += ["-I", bareAddress(source)] }
        arguments.append(bareAddress(probe.to))
        do {
            c.ping = try Command(arguments, output: .discard, in: .named(namespace)).spawn()
        } catch {
            throw HarnessError("ping: \(error)")
        }
    }
}

extension Probe.Kind {
    var isTCP: Bool { if case .tcp = self { true } else { false } }
}
