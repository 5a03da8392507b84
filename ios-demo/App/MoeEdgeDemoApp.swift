// The SwiftUI demo app. Add these files to an iOS App target in Xcode and add the
// local package (ios-demo) as a dependency; see ios-demo/README.md.

import MoeEdge
import SwiftUI

@main
struct MoeEdgeDemoApp: App {
    @StateObject private var model = DemoModel()

    var body: some Scene {
        WindowGroup { ContentView(model: model) }
    }
}

/// One edge server as typed in the settings panel.
struct EdgeServerInput: Identifiable, Equatable {
    let id = UUID()
    var address = ""
    var certSha256 = ""
    var token = ""
}

/// The screen's state: drives the MoeEdgeSession actor and publishes what the UI shows.
@MainActor
final class DemoModel: ObservableObject {
    @Published var status = "No engine"
    @Published var answer = ""
    @Published var error: String?
    @Published var generating = false
    @Published var placements: [Placement] = []
    @Published var servers: [EdgeServerInput] = []

    private let session = MoeEdgeSession()
    private var task: Task<Void, Never>?

    /// Where the app expects the base model: copy it into the app's Documents folder
    /// (Finder file sharing or Xcode's device window).
    let modelPath = FileManager.default.urls(for: .documentDirectory, in: .userDomainMask)[0]
        .appendingPathComponent("SmolLM2-135M-Instruct.Q4_1.gguf").path

    init() { reload() }

    /// (Re)creates the engine with the current settings.
    func reload() {
        let config = EngineConfig(
            baseModel: modelPath,
            modelsDir: Bundle.main.resourcePath ?? "",
            threads: nil,
            memoryBudgetMb: 512,
            edgeServers: servers.map { EdgeServerConfig(address: $0.address, certSha256: $0.certSha256, token: $0.token) },
            policy: .sac)
        status = "Loading …"
        Task {
            do {
                try await session.load(config)
                await refreshStatus()
            } catch {
                status = "Engine failed"
                self.error = String(describing: error)
            }
        }
    }

    /// Streams the answer to `prompt`.
    func ask(_ prompt: String) {
        task?.cancel()
        answer = ""
        error = nil
        generating = true
        task = Task {
            do {
                for try await piece in session.generate(prompt) {
                    answer += piece
                    placements = session.placements
                }
            } catch MoeError.Cancelled {
                // Stopped by the user: keep the partial answer.
            } catch {
                self.error = String(describing: error)
            }
            placements = session.placements
            generating = false
            await refreshStatus()
        }
    }

    /// Stops the answer being streamed.
    func stop() {
        Task { await session.stop() }
    }

    private func refreshStatus() async {
        if case .ready(let s) = await session.state {
            status = "Ready · policy \(s.policy) · \(s.threads) threads · \(s.memoryInUseMb)/\(s.memoryBudgetMb) MB"
        }
    }
}
