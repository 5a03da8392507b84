package org.moeedge.demo

import android.os.Bundle
import androidx.activity.ComponentActivity
import androidx.activity.compose.setContent
import androidx.activity.viewModels
import androidx.compose.foundation.layout.Arrangement
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.Row
import androidx.compose.foundation.layout.fillMaxSize
import androidx.compose.foundation.layout.fillMaxWidth
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.rememberScrollState
import androidx.compose.foundation.verticalScroll
import androidx.compose.material3.Button
import androidx.compose.material3.Card
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.OutlinedButton
import androidx.compose.material3.OutlinedTextField
import androidx.compose.material3.Surface
import androidx.compose.material3.Text
import androidx.compose.runtime.Composable
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.remember
import androidx.compose.runtime.setValue
import androidx.compose.ui.Modifier
import androidx.compose.ui.unit.dp
import androidx.lifecycle.compose.collectAsStateWithLifecycle
import org.moeedge.Placement
import org.moeedge.State

/** The demo's single screen: prompt, streamed answer, stop, placements, edge servers. */
class MainActivity : ComponentActivity() {
    private val model: DemoViewModel by viewModels()

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContent {
            MaterialTheme {
                Surface(Modifier.fillMaxSize()) { DemoScreen(model) }
            }
        }
    }
}

@Composable
fun DemoScreen(model: DemoViewModel) {
    val state by model.state.collectAsStateWithLifecycle()
    val answer by model.answer.collectAsStateWithLifecycle()
    val error by model.error.collectAsStateWithLifecycle()
    val servers by model.servers.collectAsStateWithLifecycle()
    var prompt by remember { mutableStateOf("Why is the sky blue?") }
    val generating = state is State.Generating

    Column(
        Modifier.padding(16.dp).verticalScroll(rememberScrollState()),
        verticalArrangement = Arrangement.spacedBy(12.dp),
    ) {
        Text(statusLine(state, model.modelPath), style = MaterialTheme.typography.labelMedium)
        OutlinedTextField(prompt, { prompt = it }, Modifier.fillMaxWidth(), label = { Text("Prompt") })
        Row(horizontalArrangement = Arrangement.spacedBy(8.dp)) {
            Button({ model.ask(prompt) }, enabled = state is State.Ready) { Text("Generate") }
            OutlinedButton({ model.stop() }, enabled = generating) { Text("Stop") }
        }
        error?.let { Text(it, color = MaterialTheme.colorScheme.error) }
        Card(Modifier.fillMaxWidth()) { Text(answer, Modifier.padding(12.dp)) }
        PlacementPanel(placements(state))
        EdgeServerSettings(servers, model::setServers, model::reload)
    }
}

private fun statusLine(state: State, modelPath: String): String = when (state) {
    State.Idle -> "No engine"
    State.Loading -> "Loading $modelPath …"
    is State.Ready -> "Ready · policy ${state.status.policy} · ${state.status.threads} threads · " +
        "${state.status.memoryInUseMb}/${state.status.memoryBudgetMb} MB"
    is State.Generating -> "Generating …"
    is State.Failed -> "Engine failed: ${state.error.message}"
}

private fun placements(state: State): List<Placement> = when (state) {
    is State.Generating -> state.placements
    is State.Ready -> state.placements
    else -> emptyList()
}

/** Where each subtask ran: expert, node, tokens, fallback. */
@Composable
fun PlacementPanel(placements: List<Placement>) {
    Card(Modifier.fillMaxWidth()) {
        Column(Modifier.padding(12.dp), verticalArrangement = Arrangement.spacedBy(4.dp)) {
            Text("Subtasks", style = MaterialTheme.typography.titleSmall)
            if (placements.isEmpty()) Text("—")
            for (p in placements) {
                val progress = if (p.done) "${p.tokens} tokens" else "running"
                val fallback = if (p.fellBack) " · fell back to the phone" else ""
                Text("#${p.subtask}: ${p.expert} on ${p.node} · $progress$fallback")
            }
        }
    }
}

/** Edit the edge servers (address, certificate SHA-256, token) and reload the engine. */
@Composable
fun EdgeServerSettings(
    servers: List<EdgeServerInput>,
    onChange: (List<EdgeServerInput>) -> Unit,
    onApply: () -> Unit,
) {
    Card(Modifier.fillMaxWidth()) {
        Column(Modifier.padding(12.dp), verticalArrangement = Arrangement.spacedBy(8.dp)) {
            Text("Edge servers", style = MaterialTheme.typography.titleSmall)
            servers.forEachIndexed { i, s ->
                val update = { changed: EdgeServerInput -> onChange(servers.toMutableList().also { it[i] = changed }) }
                OutlinedTextField(s.address, { update(s.copy(address = it)) }, Modifier.fillMaxWidth(),
                    label = { Text("host:port") })
                OutlinedTextField(s.certSha256, { update(s.copy(certSha256 = it)) }, Modifier.fillMaxWidth(),
                    label = { Text("certificate SHA-256") })
                OutlinedTextField(s.token, { update(s.copy(token = it)) }, Modifier.fillMaxWidth(),
                    label = { Text("token") })
                OutlinedButton({ onChange(servers.filterIndexed { j, _ -> j != i }) }) { Text("Remove") }
            }
            Row(horizontalArrangement = Arrangement.spacedBy(8.dp)) {
                OutlinedButton({ onChange(servers + EdgeServerInput()) }) { Text("Add server") }
                Button(onApply) { Text("Apply") }
            }
        }
    }
}
