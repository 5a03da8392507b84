package org.moeedge

import java.util.concurrent.Executors
import kotlinx.coroutines.CoroutineDispatcher
import kotlinx.coroutines.asCoroutineDispatcher
import kotlinx.coroutines.channels.awaitClose
import kotlinx.coroutines.channels.trySendBlocking
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.asStateFlow
import kotlinx.coroutines.flow.callbackFlow
import kotlinx.coroutines.flow.update
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext
import org.moeedge.ffi.CancelHandle
import org.moeedge.ffi.EngineConfig
import org.moeedge.ffi.EngineStatus
import org.moeedge.ffi.GenerateOptions
import org.moeedge.ffi.GenerationEvent
import org.moeedge.ffi.GenerationListener
import org.moeedge.ffi.MoeEngine
import org.moeedge.ffi.MoeException

/** Where one subtask of the current (or last) answer runs, for the placement panel. */
data class Placement(
    val subtask: Int,
    val expert: String,
    val node: String,
    val tokens: Int = 0,
    val done: Boolean = false,
    val fellBack: Boolean = false,
)

/** What the session is doing; observe it from the UI through [MoeEdgeSession.state]. */
sealed interface State {
    /** No engine loaded yet. */
    data object Idle : State

    /** The engine is loading its models. */
    data object Loading : State

    /** Ready for a prompt; [placements] describe the last answer. */
    data class Ready(val status: EngineStatus, val placements: List<Placement> = emptyList()) : State

    /** An answer is streaming. */
    data class Generating(val prompt: String, val placements: List<Placement>) : State

    /** Loading failed; call [MoeEdgeSession.load] again with a fixed config. */
    data class Failed(val error: MoeException) : State
}

/**
 * The app's one handle on the native engine, free of Android UI classes. Every
 * engine call runs on a single owner thread, so one answer streams at a time;
 * the UI talks to it through [state] and the [Flow] returned by [generate].
 */
class MoeEdgeSession : AutoCloseable {
    private val executor = Executors.newSingleThreadExecutor { Thread(it, OWNER_THREAD).apply { isDaemon = true } }
    private val owner: CoroutineDispatcher = executor.asCoroutineDispatcher()
    private val mutableState = MutableStateFlow<State>(State.Idle)

    // Touched only on the owner thread.
    private var engine: MoeEngine? = null

    @Volatile private var current: CancelHandle? = null

    /** The engine's state, for the UI. */
    val state: StateFlow<State> = mutableState.asStateFlow()

    /** Loads (or reloads) the engine with [config]; the outcome is in [state] and thrown on failure. */
    suspend fun load(config: EngineConfig) = withContext(owner) {
        mutableState.value = State.Loading
        engine?.close()
        engine = null
        try {
            val loaded = MoeEngine(config)
            engine = loaded
            mutableState.value = State.Ready(loaded.status())
        } catch (e: MoeException) {
            mutableState.value = State.Failed(e)
            throw e
        }
    }

    /**
     * Streams the answer to [prompt]. Collecting starts the generation; cancelling
     * the collector (or calling [stop]) stops it. The flow fails with the engine's
     * [MoeException] (`Cancelled` after [stop]).
     */
    fun generate(prompt: String, options: GenerateOptions = GenerateOptions()): Flow<String> = callbackFlow {
        val handle = CancelHandle()
        launch(owner) {
            val engine = engine ?: throw MoeException.InvalidInput("no engine loaded: call load() first")
            current = handle
            mutableState.value = State.Generating(prompt, emptyList())
            val listener = object : GenerationListener {
                override fun onText(subtask: UInt, text: String) {
                    trySendBlocking(text)
                }

                override fun onEvent(event: GenerationEvent) {
                    mutableState.update { s -> if (s is State.Generating) s.copy(placements = apply(s.placements, event)) else s }
                }
            }
            try {
                engine.generate(prompt, options, listener, handle)
                close()
            } catch (e: MoeException) {
                close(e)
            } finally {
                current = null
                val placements = (mutableState.value as? State.Generating)?.placements ?: emptyList()
                mutableState.value = State.Ready(engine.status(), placements)
            }
        }
        awaitClose { handle.cancel() }
    }

    /** Stops the answer that is streaming, if any. Callable from any thread. */
    fun stop() {
        current?.cancel()
    }

    /** Passes the phone's battery (0..1), charging state and thermal pressure (0..1) to the policy. */
    suspend fun setDeviceState(battery: Float, charging: Boolean, thermal: Float) = withContext(owner) {
        val engine = engine ?: throw MoeException.InvalidInput("no engine loaded: call load() first")
        engine.setDeviceState(battery, charging, thermal)
        mutableState.update { s -> if (s is State.Ready) s.copy(status = engine.status()) else s }
    }

    /** Stops any answer, frees the native engine and the owner thread. */
    override fun close() {
        stop()
        executor.submit {
            engine?.close()
            engine = null
            mutableState.value = State.Idle
        }.get()
        executor.shutdown()
    }

    private fun apply(placements: List<Placement>, event: GenerationEvent): List<Placement> = when (event) {
        is GenerationEvent.Placed ->
            placements.filter { it.subtask != event.subtask.toInt() } +
                Placement(event.subtask.toInt(), event.expert, event.node)
        is GenerationEvent.Fallback ->
            placements.map { if (it.subtask == event.subtask.toInt()) it.copy(node = "phone", expert = "base", fellBack = true) else it }
        is GenerationEvent.SubtaskDone ->
            placements.map { if (it.subtask == event.subtask.toInt()) it.copy(tokens = event.tokens.toInt(), done = true) else it }
    }

    companion object {
        /** Name of the thread that owns the native engine. */
        const val OWNER_THREAD = "moe-edge-engine"
    }
}
