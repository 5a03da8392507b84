// The iOS demo's facade over the generated bindings: an actor that owns the
// engine, and an AsyncThrowingStream of the answer's text. No UIKit/SwiftUI here,
// so it also builds and is tested on Linux (bindings/tests/run-swift.sh).

import Foundation

/// Where one subtask of an answer runs, for the placement panel.
public struct Placement: Equatable, Sendable {
    /// Subtask index.
    public var subtask: Int
    /// Expert id (`"base"` is the phone's base model).
    public var expert: String
    /// `"phone"` or the edge server's address.
    public var node: String
    /// Tokens generated so far (set when the subtask is done).
    public var tokens: Int = 0
    /// Whether the subtask has finished.
    public var done: Bool = false
    /// Whether it fell back to the phone after a remote failure.
    public var fellBack: Bool = false
}

extension MoeEngine {
    /// `generateAsync` that stops native decoding when the calling `Task` is cancelled
    /// (the call then throws `MoeError.Cancelled`).
    public func generateCancellable(
        prompt: String, options: GenerateOptions = GenerateOptions(), listener: GenerationListener
    ) async throws -> GenerationResult {
        let handle = CancelHandle()
        return try await withTaskCancellationHandler {
            try await generateAsync(prompt: prompt, options: options, listener: listener, cancel: handle)
        } onCancel: {
            handle.cancel()
        }
    }
}

/// The app's one handle on the native engine. Every engine call goes through this
/// actor; answers stream as `AsyncThrowingStream<String, Error>`.
public actor MoeEdgeSession {
    /// What the session is doing.
    public enum State: Equatable {
        /// No engine loaded yet.
        case idle
        /// The engine is loading its models.
        case loading
        /// Ready for a prompt.
        case ready(EngineStatus)
        /// An answer is streaming.
        case generating(prompt: String)
        /// Loading failed, with the error's description.
        case failed(String)
    }

    private var engine: MoeEngine?
    private var current: CancelHandle?
    /// What the session is doing now.
    public private(set) var state: State = .idle
    private let board = PlacementBoard()
    /// Where the subtasks of the current (or last) answer run; updated live from the engine's events.
    public nonisolated var placements: [Placement] { board.snapshot() }

    /// A session with no engine; call `load(_:)`.
    public init() {}

    /// Loads (or reloads) the engine off the caller's thread; the outcome is in `state`.
    public func load(_ config: EngineConfig) async throws {
        state = .loading
        engine = nil
        do {
            let loaded = try await Task.detached { try MoeEngine(config: config) }.value
            engine = loaded
            state = .ready(loaded.status())
        } catch {
            state = .failed(String(describing: error))
            throw error
        }
    }

    /// Streams the answer to `prompt`. Ending the iteration early (or `stop()`)
    /// stops native decoding; the stream then finishes with `MoeError.Cancelled`.
    public nonisolated func generate(
        _ prompt: String, options: GenerateOptions = GenerateOptions()
    ) -> AsyncThrowingStream<String, Error> {
        AsyncThrowingStream { continuation in
            let handle = CancelHandle()
            continuation.onTermination = { _ in handle.cancel() }
            Task { await self.run(prompt, options, handle, continuation) }
        }
    }

    /// Stops the answer that is streaming, if any.
    public func stop() {
        current?.cancel()
    }

    /// Passes the phone's battery (0...1), charging state and thermal pressure (0...1) to the policy.
    public func setDeviceState(battery: Float, charging: Bool, thermal: Float) throws {
        guard let engine else { throw MoeError.InvalidInput(message: "no engine loaded: call load() first") }
        try engine.setDeviceState(battery: battery, charging: charging, thermal: thermal)
        if case .ready = state { state = .ready(engine.status()) }
    }

    private func run(
        _ prompt: String, _ options: GenerateOptions, _ handle: CancelHandle,
        _ continuation: AsyncThrowingStream<String, Error>.Continuation
    ) async {
        guard let engine else {
            continuation.finish(throwing: MoeError.InvalidInput(message: "no engine loaded: call load() first"))
            return
        }
        current = handle
        state = .generating(prompt: prompt)
        board.reset()
        let listener = StreamListener(continuation, board)
        do {
            _ = try await engine.generateAsync(prompt: prompt, options: options, listener: listener, cancel: handle)
            continuation.finish()
        } catch {
            continuation.finish(throwing: error)
        }
        if current === handle { current = nil }
        state = .ready(engine.status())
    }
}

/// Forwards the engine's callbacks to a stream continuation.
private final class StreamListener: GenerationListener, @unchecked Sendable {
    private let continuation: AsyncThrowingStream<String, Error>.Continuation
    private let board: PlacementBoard

    init(_ continuation: AsyncThrowingStream<String, Error>.Continuation, _ board: PlacementBoard) {
        self.continuation = continuation
        self.board = board
    }

    func onText(subtask: UInt32, text: String) throws {
        continuation.yield(text)
    }

    func onEvent(event: GenerationEvent) throws {
        board.apply(event)
    }
}

/// The placements of the answer in progress, written from the engine's thread.
private final class PlacementBoard: @unchecked Sendable {
    private let lock = NSLock()
    private var placements: [Placement] = []

    func snapshot() -> [Placement] {
        lock.lock()
        defer { lock.unlock() }
        return placements
    }

    func reset() {
        lock.lock()
        defer { lock.unlock() }
        placements = []
    }

    func apply(_ event: GenerationEvent) {
        lock.lock()
        defer { lock.unlock() }
        switch event {
        case let .placed(subtask, expert, node):
            placements.removeAll { $0.subtask == Int(subtask) }
            placements.append(Placement(subtask: Int(subtask), expert: expert, node: node))
        case let .fallback(subtask, _, _):
            for i in placements.indices where placements[i].subtask == Int(subtask) {
                placements[i].expert = "base"
                placements[i].node = "phone"
                placements[i].fellBack = true
            }
        case let .subtaskDone(subtask, tokens):
            for i in placements.indices where placements[i].subtask == Int(subtask) {
                placements[i].tokens = Int(tokens)
                placements[i].done = true
            }
        }
    }
}
