// Swift-on-Linux tests of the generated Swift bindings and of the iOS demo's
// facade, against the real base model. Run by bindings/tests/run-swift.sh.

import Foundation

let env = ProcessInfo.processInfo.environment
let baseModel = env["MOE_EDGE_BASE_MODEL"]!
let modelsDir = env["MOE_EDGE_MODELS_DIR"]!

/// A chat prompt whose greedy answer is the base model's under llama.cpp (core/tests/fixtures/golden).
let france = "What is the capital of France? Answer in one sentence."
let franceAnswer = "The capital of France is Paris."
/// The expert the committed gate and quality table pick for `france`: the prose adapter, which answers it as the base does.
let franceExpert = "prose"
let story = "Tell me a long story about a dragon."
let pin = String(repeating: "0123456789abcdef", count: 4)

func config(budgetMb: UInt32 = 1024, threads: UInt32? = 2, servers: [EdgeServerConfig] = []) -> EngineConfig {
    EngineConfig(baseModel: baseModel, modelsDir: modelsDir, threads: threads, memoryBudgetMb: budgetMb,
                 edgeServers: servers, policy: .sac)
}

func greedy(_ maxTokens: UInt32) -> GenerateOptions { GenerateOptions(maxTokens: maxTokens, temperature: 0) }

struct Failure: Error, CustomStringConvertible { let description: String }

func expect(_ condition: Bool, _ message: @autoclosure () -> String = "check failed") throws {
    if !condition { throw Failure(description: message()) }
}

func expectEqual<T: Equatable>(_ expected: T, _ actual: T, _ what: String) throws {
    try expect(expected == actual, "\(what): expected <\(expected)>, got <\(actual)>")
}

/// Runs `body` and returns the MoeError it throws (fails if none or another error).
func expectError(_ body: () async throws -> Void) async throws -> MoeError {
    do {
        try await body()
    } catch let error as MoeError {
        return error
    }
    throw Failure(description: "expected a MoeError, nothing was thrown")
}

/// Records everything a generation streams.
final class Recorder: GenerationListener, @unchecked Sendable {
    private let lock = NSLock()
    private var _pieces: [String] = []
    private var _events: [GenerationEvent] = []
    let onPiece: (Int) throws -> Void

    init(onPiece: @escaping (Int) throws -> Void = { _ in }) { self.onPiece = onPiece }

    var pieces: [String] { lock.lock(); defer { lock.unlock() }; return _pieces }
    var events: [GenerationEvent] { lock.lock(); defer { lock.unlock() }; return _events }
    var text: String { pieces.joined() }

    func onText(subtask: UInt32, text: String) throws {
        lock.lock()
        _pieces.append(text)
        let n = _pieces.count
        lock.unlock()
        try onPiece(n)
    }

    func onEvent(event: GenerationEvent) throws {
        lock.lock()
        _events.append(event)
        lock.unlock()
    }
}

/// Waits until the engine has no generation in flight (the native side really stopped).
func awaitIdle(_ engine: MoeEngine) async throws {
    let deadline = Date().addingTimeInterval(30)
    while engine.status().activeGenerations != 0 {
        try expect(Date() < deadline, "generation still running 30 s after cancellation")
        try await Task.sleep(nanoseconds: 10_000_000)
    }
}

let engine = try MoeEngine(config: config())

let tests: [(String, () async throws -> Void)] = [
    ("greedy answer is the golden one and streams in pieces", {
        let rec = Recorder()
        let result = try engine.generate(prompt: france, options: greedy(64), listener: rec)
        try expectEqual(franceAnswer, result.text, "text")
        try expectEqual(franceAnswer, rec.text, "streamed text")
        try expect(rec.pieces.count > 3, "only \(rec.pieces.count) pieces")
        try expectEqual(StopReason.endOfSequence, result.stopReason, "stop reason")
        try expectEqual(42, result.promptTokens, "prompt tokens")
    }),
    ("events: placed on the phone, then done with the token count", {
        let rec = Recorder()
        let result = try engine.generate(prompt: france, options: greedy(64), listener: rec)
        try expectEqual(GenerationEvent.placed(subtask: 0, expert: franceExpert, node: "phone"), rec.events.first!, "first")
        try expectEqual(GenerationEvent.subtaskDone(subtask: 0, tokens: result.generatedTokens), rec.events.last!, "last")
        let placed = result.subtasks.map { "\($0.index) \($0.expert) \($0.node) \($0.generatedTokens) \($0.fellBack)" }
        try expectEqual(["0 \(franceExpert) phone \(result.generatedTokens) false"], placed, "subtasks")
        try expect(result.subtasks[0].latencyMs > 0, "latency \(result.subtasks[0].latencyMs)")
    }),
    ("max tokens and stop strings end generation", {
        let short = try engine.generate(prompt: france, options: greedy(3), listener: Recorder())
        try expectEqual(3, short.generatedTokens, "tokens")
        try expectEqual(StopReason.maxTokens, short.stopReason, "stop reason")
        let stopped = try engine.generate(prompt: france, options: GenerateOptions(temperature: 0, stop: [" Paris"]),
                                          listener: Recorder())
        try expectEqual("The capital of France is", stopped.text, "text")
        try expectEqual(StopReason.stopString, stopped.stopReason, "stop reason")
    }),
    ("async generateAsync gives the blocking result", {
        let result = try await engine.generateAsync(prompt: france, options: greedy(64), listener: Recorder())
        try expectEqual(franceAnswer, result.text, "text")
    }),
    ("cancel handle from another thread stops within a token", {
        let handle = CancelHandle()
        let seen = NSLock()
        var seenAtCancel = -1
        let rec = Recorder { n in
            if n == 3 {
                Thread.detachNewThread { seen.lock(); seenAtCancel = n; seen.unlock(); handle.cancel() }
            }
        }
        let error = try await expectError { _ = try engine.generate(prompt: story, options: greedy(200), listener: rec, cancel: handle) }
        guard case .Cancelled = error else { throw Failure(description: "expected Cancelled, got \(error)") }
        seen.lock(); let at = seenAtCancel; seen.unlock()
        try expect(at == 3 && rec.pieces.count <= at + 3, "\(rec.pieces.count) pieces after cancelling at \(at)")
    }),
    ("Task cancellation stops native decoding", {
        let rec = Recorder()
        let task = Task { try await engine.generateCancellable(prompt: story, options: greedy(200), listener: rec) }
        while rec.pieces.count < 2 { try await Task.sleep(nanoseconds: 5_000_000) }
        task.cancel()
        let outcome = await task.result
        guard case .failure(let error) = outcome, case MoeError.Cancelled = error else {
            throw Failure(description: "expected Cancelled, got \(outcome)")
        }
        try await awaitIdle(engine)
        let after = rec.pieces.count
        try expect(after < 20, "\(after) pieces: decoding went on after cancellation")
    }),
    ("errors map to InvalidInput and ModelLoad", {
        guard case .InvalidInput = try await expectError({ _ = try engine.generate(prompt: "  ", options: greedy(8), listener: Recorder()) })
        else { throw Failure(description: "blank prompt") }
        guard case .InvalidInput = try await expectError({ _ = try engine.generate(prompt: france, options: GenerateOptions(temperature: -1), listener: Recorder()) })
        else { throw Failure(description: "negative temperature") }
        guard case .InvalidInput = try await expectError({ try engine.setDeviceState(battery: -0.1, charging: false, thermal: 0) })
        else { throw Failure(description: "battery") }
        var missing = config()
        missing.baseModel = modelsDir + "/no-such-model.gguf"
        guard case .ModelLoad = try await expectError({ _ = try MoeEngine(config: missing) })
        else { throw Failure(description: "missing model") }
        guard case .InvalidInput = try await expectError({ _ = try MoeEngine(config: config(threads: 0)) })
        else { throw Failure(description: "zero threads") }
        let badAddress = EdgeServerConfig(address: "edge.local", certSha256: pin, token: "t")
        guard case .InvalidInput(let message) = try await expectError({ _ = try MoeEngine(config: config(servers: [badAddress])) })
        else { throw Failure(description: "bad address") }
        try expect(message.contains("host:port"), message)
    }),
    ("a throwing listener stops generation with Other", {
        struct UIGone: Error {}
        let rec = Recorder { n in if n == 2 { throw UIGone() } }
        guard case .Other(let message) = try await expectError({ _ = try engine.generate(prompt: france, options: greedy(64), listener: rec) })
        else { throw Failure(description: "expected Other") }
        try expect(message.contains("UIGone"), message)
        try expectEqual(2, rec.pieces.count, "pieces")
    }),
    ("Busy when the memory budget is in use", {
        let size = try URL(fileURLWithPath: baseModel).resourceValues(forKeys: [.fileSizeKey]).fileSize!
        let modelMb = UInt32(size >> 20) + 1
        // Each generation below reserves (42 + 64) tokens × 45 KB of KV cache ≈ 4.7 MB.
        let small = try MoeEngine(config: config(budgetMb: modelMb + 8))
        var inner: Error?
        let rec = Recorder { n in
            if n == 1 {
                do { _ = try small.generate(prompt: france, options: greedy(64), listener: Recorder()) } catch { inner = error }
            }
        }
        try expectEqual(franceAnswer, try small.generate(prompt: france, options: greedy(64), listener: rec).text, "first")
        guard case .Busy = inner as? MoeError else { throw Failure(description: "second generation: \(String(describing: inner))") }
        try expectEqual(0, small.status().activeGenerations, "active")
    }),
    ("four tasks generating at once get the single-thread answers", {
        let prompts = [france, "Name a colour.", "What is 2 + 2?", "Say hello."]
        var alone: [String] = []
        for p in prompts { alone.append(try engine.generate(prompt: p, options: greedy(24), listener: Recorder()).text) }
        let together = try await withThrowingTaskGroup(of: (Int, String).self) { group in
            for (i, p) in prompts.enumerated() {
                group.addTask { (i, try await engine.generateAsync(prompt: p, options: greedy(24), listener: Recorder()).text) }
            }
            var out = [String](repeating: "", count: prompts.count)
            for try await (i, text) in group { out[i] = text }
            return out
        }
        try expectEqual(alone, together, "answers")
    }),
    ("status reports config, device state and edge servers", {
        let e = try MoeEngine(config: config(servers: [EdgeServerConfig(address: "192.168.1.20:4433", certSha256: pin, token: "tok")]))
        try e.setDeviceState(battery: 0.25, charging: true, thermal: 0.5)
        let s = e.status()
        try expectEqual(DeviceState(battery: 0.25, charging: true, thermal: 0.5), s.device, "device")
        try expectEqual("sac", s.policy, "policy")
        try expectEqual(2, s.threads, "threads")
        try expectEqual(["192.168.1.20:4433"], s.edgeServers.map(\.address), "servers")
        try expect(s.edgeServers.allSatisfy { !$0.connected }, "connected")
    }),
    ("facade: actor loads, streams tokens, tracks placements", {
        let session = MoeEdgeSession()
        try await expectEqual(MoeEdgeSession.State.idle, await session.state, "initial")
        try await session.load(config())
        guard case .ready = await session.state else { throw Failure(description: "not ready") }
        var text = ""
        for try await piece in session.generate(france, options: greedy(64)) { text += piece }
        try expectEqual(franceAnswer, text, "text")
        let placements = session.placements
        try expectEqual(1, placements.count, "placements")
        try expect(placements[0].node == "phone" && placements[0].done && placements[0].tokens > 0, "\(placements)")
        guard case .ready = await session.state else { throw Failure(description: "not ready after") }
    }),
    ("facade: stop() and breaking out of the stream stop the engine", {
        let session = MoeEdgeSession()
        try await session.load(config())
        var n = 0
        for try await _ in session.generate(story, options: greedy(200)) {
            n += 1
            if n == 3 { break }
        }
        // Breaking out terminates the stream, which cancels the native generation.
        var status: EngineStatus? = nil
        for _ in 0..<3000 {
            if case .ready(let s) = await session.state { status = s; break }
            try await Task.sleep(nanoseconds: 10_000_000)
        }
        try expectEqual(0, status?.activeGenerations, "active after break")
        var seen = 0
        do {
            for try await _ in session.generate(story, options: greedy(200)) {
                seen += 1
                if seen == 2 { await session.stop() }
            }
            throw Failure(description: "stream finished without Cancelled")
        } catch MoeError.Cancelled {}
        try expect(seen <= 4, "\(seen) pieces after stop()")
    }),
]

var passed = 0
var failed = 0
let only = CommandLine.arguments.dropFirst().first
for (name, test) in tests where only == nil || name.contains(only!) {
    let start = Date()
    do {
        try await test()
        passed += 1
        print("PASS  \(name) (\(Int(Date().timeIntervalSince(start) * 1000)) ms)")
    } catch {
        failed += 1
        print("FAIL  \(name): \(error)")
    }
}
print("\(passed) passed, \(failed) failed")
exit(failed == 0 && passed > 0 ? 0 : 1)
