package org.moeedge.demo

import android.app.Application
import androidx.lifecycle.AndroidViewModel
import androidx.lifecycle.viewModelScope
import java.io.File
import kotlinx.coroutines.Job
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.asStateFlow
import kotlinx.coroutines.launch
import org.moeedge.MoeEdgeSession
import org.moeedge.State
import org.moeedge.ffi.EdgeServerConfig
import org.moeedge.ffi.EngineConfig
import org.moeedge.ffi.MoeException
import org.moeedge.ffi.PolicyChoice

/** One edge server as typed in the settings panel. */
data class EdgeServerInput(val address: String = "", val certSha256: String = "", val token: String = "")

/** Holds the session, the answer being streamed and the settings; survives rotation. */
class DemoViewModel(app: Application) : AndroidViewModel(app) {
    private val session = MoeEdgeSession()
    private var generation: Job? = null

    /** The engine's state (placements, status) from the facade. */
    val state: StateFlow<State> = session.state

    private val mutableAnswer = MutableStateFlow("")
    /** The answer streamed so far. */
    val answer: StateFlow<String> = mutableAnswer.asStateFlow()

    private val mutableError = MutableStateFlow<String?>(null)
    /** The last error, for a snackbar-like line. */
    val error: StateFlow<String?> = mutableError.asStateFlow()

    private val mutableServers = MutableStateFlow(listOf<EdgeServerInput>())
    /** Edge servers from the settings panel. */
    val servers: StateFlow<List<EdgeServerInput>> = mutableServers.asStateFlow()

    /** Where the app expects the base model (push it with adb, see the README). */
    val modelPath: String =
        File(app.getExternalFilesDir(null), "SmolLM2-135M-Instruct.Q4_1.gguf").path

    /** Where the app expects the small models: the repository's `models/` (push it with adb). */
    val modelsDir: String = File(app.getExternalFilesDir(null), "models").path

    init {
        reload()
    }

    /** (Re)creates the engine with the current settings. */
    fun reload() {
        viewModelScope.launch {
            mutableError.value = null
            val config = EngineConfig(
                baseModel = modelPath,
                modelsDir = modelsDir,
                threads = null,
                memoryBudgetMb = 512u,
                edgeServers = mutableServers.value.map { EdgeServerConfig(it.address, it.certSha256, it.token) },
                policy = PolicyChoice.Sac,
            )
            try {
                session.load(config)
            } catch (e: MoeException) {
                mutableError.value = e.message
            }
        }
    }

    /** Streams the answer to [prompt] into [answer]. */
    fun ask(prompt: String) {
        generation?.cancel()
        mutableAnswer.value = ""
        mutableError.value = null
        generation = viewModelScope.launch {
            try {
                session.generate(prompt).collect { mutableAnswer.value += it }
            } catch (e: MoeException.Cancelled) {
                // Stopped by the user: keep the partial answer.
            } catch (e: MoeException) {
                mutableError.value = e.message
            }
        }
    }

    /** Stops the answer being streamed. */
    fun stop() = session.stop()

    /** Replaces the edge-server list; applied by [reload]. */
    fun setServers(servers: List<EdgeServerInput>) {
        mutableServers.value = servers
    }

    override fun onCleared() {
        session.close()
    }
}
