// The demo's single screen: prompt, streamed answer, stop, placements, edge servers.

import MoeEdge
import SwiftUI

struct ContentView: View {
    @ObservedObject var model: DemoModel
    @State private var prompt = "Why is the sky blue?"

    var body: some View {
        NavigationStack {
            Form {
                Section { Text(model.status).font(.caption) }
                Section("Prompt") {
                    TextField("Ask something", text: $prompt, axis: .vertical)
                    HStack {
                        Button("Generate") { model.ask(prompt) }.disabled(model.generating)
                        Spacer()
                        Button("Stop", role: .destructive) { model.stop() }.disabled(!model.generating)
                    }
                }
                if let error = model.error {
                    Section { Text(error).foregroundStyle(.red) }
                }
                Section("Answer") { Text(model.answer).textSelection(.enabled) }
                Section("Subtasks") {
                    if model.placements.isEmpty { Text("—") }
                    ForEach(model.placements, id: \.subtask) { p in
                        Text("#\(p.subtask): \(p.expert) on \(p.node) · "
                             + (p.done ? "\(p.tokens) tokens" : "running")
                             + (p.fellBack ? " · fell back to the phone" : ""))
                    }
                }
                Section("Edge servers") {
                    ForEach($model.servers) { $server in
                        TextField("host:port", text: $server.address)
                        TextField("certificate SHA-256", text: $server.certSha256)
                        SecureField("token", text: $server.token)
                    }
                    .onDelete { model.servers.remove(atOffsets: $0) }
                    Button("Add server") { model.servers.append(EdgeServerInput()) }
                    Button("Apply") { model.reload() }
                }
            }
            .navigationTitle("moe-edge")
        }
    }
}
