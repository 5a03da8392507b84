// JVM tests of the generated Kotlin bindings and of the Android demo's facade,
// against the real base model. Run by bindings/tests/run-kotlin.sh.

import java.util.Collections
import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit
import java.util.concurrent.atomic.AtomicInteger
import kotlin.concurrent.thread
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.async
import kotlinx.coroutines.awaitAll
import kotlinx.coroutines.delay
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.flow.take
import kotlinx.coroutines.flow.toList
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.moeedge.MoeEdgeSession
import org.moeedge.State
import org.moeedge.ffi.*

val baseModel: String = System.getenv("MOE_EDGE_BASE_MODEL") ?: error("set MOE_EDGE_BASE_MODEL")
val modelsDir: String = System.getenv("MOE_EDGE_MODELS_DIR") ?: error("set MOE_EDGE_MODELS_DIR")
val moeEdgeBin: String = System.getenv("MOE_EDGE_BIN") ?: error("set MOE_EDGE_BIN (the moe-edge CLI)")

/** A chat prompt whose greedy answer is the base model's under llama.cpp (core/tests/fixtures/golden). */
const val FRANCE = "What is the capital of France? Answer in one sentence."
const val FRANCE_ANSWER = "The capital of France is Paris."
/** The expert the committed gate and quality table pick for FRANCE: the prose adapter, which answers it as the base does. */
const val FRANCE_EXPERT = "prose"
const val PIN = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

fun config(budgetMb: UInt = 1024u, threads: UInt? = 2u, servers: List<EdgeServerConfig> = emptyList()) =
    EngineConfig(baseModel, modelsDir, threads, budgetMb, servers, PolicyChoice.Sac)

fun greedy(maxTokens: UInt) = GenerateOptions(maxTokens = maxTokens, temperature = 0f)

/** Records everything a generation streams. */
class Recorder(val onPiece: (Int) -> Unit = {}) : GenerationListener {
    val pieces: MutableList<String> = Collections.synchronizedList(mutableListOf())
    val events: MutableList<GenerationEvent> = Collections.synchronizedList(mutableListOf())
    val threads: MutableSet<String> = Collections.synchronizedSet(mutableSetOf())

    /** The subtask of each piece, in arrival order. */
    val subtasks: MutableList<UInt> = Collections.synchronizedList(mutableListOf())

    override fun onText(subtask: UInt, text: String) {
        subtasks.add(subtask)
        pieces.add(text)
        threads.add(Thread.currentThread().name)
        onPiece(pieces.size)
    }

    override fun onEvent(event: GenerationEvent) {
        events.add(event)
    }

    fun text() = synchronized(pieces) { pieces.joinToString("") }

    /** The streamed text of each subtask, in order. */
    fun bySubtask(): List<String> = synchronized(pieces) {
        pieces.indices.groupBy({ subtasks[it] }, { pieces[it] }).toSortedMap().values.map { it.joinToString("") }
    }
}

/** A `moe-edge serve` child process on loopback hosting the base model and the arithmetic expert. */
class EdgeServerProcess : AutoCloseable {
    private val dir = kotlin.io.path.createTempDirectory("moe-edge-kotlin-edge").toFile()
    val process: Process
    val config: EdgeServerConfig

    init {
        val toml = java.io.File(dir, "edge.toml")
        toml.writeText(
            """
            state_dir = "state"
            listen = "127.0.0.1:0"
            tokens = ["kotlin-test-token"]
            [[experts]]
            id = "base"
            path = "$baseModel"
            [[experts]]
            id = "arithmetic"
            path = "$modelsDir/experts/arithmetic"
            """.trimIndent(),
        )
        process = ProcessBuilder(moeEdgeBin, "--threads", "1", "serve", "--config", toml.path)
            .redirectError(ProcessBuilder.Redirect.DISCARD)
            .start()
        val lines = process.inputStream.bufferedReader()
        fun field(prefix: String): String {
            val line = lines.readLine() ?: error("moe-edge serve exited before printing $prefix")
            check(line.startsWith(prefix)) { "expected $prefix, got $line" }
            return line.removePrefix(prefix)
        }
        val address = field("listening on ")
        val pin = field("certificate sha256 ")
        field("hosting ")
        config = EdgeServerConfig(address, pin, "kotlin-test-token")
    }

    override fun close() {
        process.destroyForcibly().waitFor()
        dir.deleteRecursively()
    }
}

fun check(condition: Boolean, message: () -> String = { "check failed" }) {
    if (!condition) throw AssertionError(message())
}

fun <T> checkEq(expected: T, actual: T, what: String) = check(expected == actual) { "$what: expected <$expected>, got <$actual>" }

inline fun <reified E : Throwable> expectThrows(block: () -> Unit): E {
    try {
        block()
    } catch (e: Throwable) {
        if (e is E) return e
        throw AssertionError("expected ${E::class.simpleName}, got $e", e)
    }
    throw AssertionError("expected ${E::class.simpleName}, nothing was thrown")
}

/** Waits until the engine has no generation in flight (the native side really stopped). */
fun awaitIdle(engine: MoeEngine) {
    val deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30)
    while (engine.status().activeGenerations != 0u) {
        check(System.nanoTime() < deadline) { "generation still running 30 s after cancellation" }
        Thread.sleep(10)
    }
}

lateinit var engine: MoeEngine

val tests: List<Pair<String, () -> Unit>> = listOf(
    "greedy answer is the golden one and streams in pieces" to {
        val rec = Recorder()
        val result = engine.generate(FRANCE, greedy(64u), rec)
        checkEq(FRANCE_ANSWER, result.text, "text")
        checkEq(FRANCE_ANSWER, rec.text(), "streamed text")
        checkEq(setOf(0u), rec.subtasks.toSet(), "one subtask")
        check(rec.pieces.size > 3) { "only ${rec.pieces.size} pieces" }
        checkEq(StopReason.END_OF_SEQUENCE, result.stopReason, "stop reason")
        checkEq(42u, result.promptTokens, "prompt tokens")
        check(result.decodeTokensPerS > 0 && result.timeToFirstTokenMs > 0) { "bad timings $result" }
    },
    "events: placed on the phone, then done with the token count" to {
        val rec = Recorder()
        val result = engine.generate(FRANCE, greedy(64u), rec)
        checkEq(GenerationEvent.Placed(0u, FRANCE_EXPERT, "phone"), rec.events.first(), "first event")
        checkEq(GenerationEvent.SubtaskDone(0u, result.generatedTokens), rec.events.last(), "last event")
        val placed = result.subtasks.map { listOf(it.index, it.expert, it.node, it.generatedTokens, it.fellBack) }
        checkEq(listOf(listOf(0u, FRANCE_EXPERT, "phone", result.generatedTokens, false)), placed, "subtasks")
        check(result.subtasks[0].latencyMs > 0) { "latency ${result.subtasks[0].latencyMs}" }
    },
    "max tokens and stop strings end generation" to {
        val short = engine.generate(FRANCE, greedy(3u), Recorder())
        checkEq(3u to StopReason.MAX_TOKENS, short.generatedTokens to short.stopReason, "max tokens")
        val stopped = engine.generate(FRANCE, GenerateOptions(temperature = 0f, stop = listOf(" Paris")), Recorder())
        checkEq("The capital of France is" to StopReason.STOP_STRING, stopped.text to stopped.stopReason, "stop string")
    },
    "seeded sampling is reproducible" to {
        val opts = { seed: ULong -> GenerateOptions(maxTokens = 16u, temperature = 1f, seed = seed) }
        val a = engine.generate("Write a short poem about the sea.", opts(11u), Recorder()).text
        val b = engine.generate("Write a short poem about the sea.", opts(11u), Recorder()).text
        val c = engine.generate("Write a short poem about the sea.", opts(12u), Recorder()).text
        checkEq(a, b, "same seed")
        check(a != c) { "another seed gave the same text" }
    },
    "cancel from another thread stops within a token" to {
        val handle = CancelHandle()
        val seenAtCancel = AtomicInteger(-1)
        val firstPieces = CountDownLatch(3)
        val rec = Recorder { firstPieces.countDown() }
        val canceller = thread {
            firstPieces.await()
            seenAtCancel.set(rec.pieces.size)
            handle.cancel()
        }
        expectThrows<MoeException.Cancelled> { engine.generate("Tell me a long story about a dragon.", greedy(200u), rec, handle) }
        canceller.join()
        check(handle.isCancelled())
        check(rec.pieces.size <= seenAtCancel.get() + 2) { "${rec.pieces.size} pieces after cancelling at ${seenAtCancel.get()}" }
        checkEq(0u, engine.status().activeGenerations, "active generations")
    },
    "a cancelled handle fails at once" to {
        val handle = CancelHandle().also { it.cancel() }
        val rec = Recorder()
        expectThrows<MoeException.Cancelled> { engine.generate(FRANCE, greedy(8u), rec, handle) }
        checkEq(0, rec.pieces.size, "pieces")
    },
    "suspend generateAsync gives the blocking result" to {
        val result = runBlocking { engine.generateAsync(FRANCE, greedy(64u), Recorder()) }
        checkEq(FRANCE_ANSWER, result.text, "text")
    },
    "cancelling the coroutine stops native decoding" to {
        val started = CountDownLatch(2)
        val rec = Recorder { started.countDown() }
        runBlocking {
            val job = launch(Dispatchers.Default) { engine.generateAsync("Tell me a long story about a dragon.", greedy(200u), rec) }
            withTimeout(60_000) { while (started.count > 0) delay(5) }
            job.cancel()
            job.join()
            check(job.isCancelled)
        }
        awaitIdle(engine)
        val after = rec.pieces.size
        check(after < 20) { "$after pieces: decoding went on after cancellation" }
        Thread.sleep(200)
        checkEq(after, rec.pieces.size, "pieces after the engine went idle")
    },
    "errors map to InvalidInput and ModelLoad" to {
        expectThrows<MoeException.InvalidInput> { engine.generate("   ", greedy(8u), Recorder()) }
        expectThrows<MoeException.InvalidInput> { engine.generate(FRANCE, GenerateOptions(temperature = -1f), Recorder()) }
        expectThrows<MoeException.InvalidInput> { engine.generate(FRANCE, GenerateOptions(topP = 0f), Recorder()) }
        expectThrows<MoeException.InvalidInput> { engine.setDeviceState(1.5f, false, 0f) }
        expectThrows<MoeException.ModelLoad> { MoeEngine(config().copy(baseModel = "$modelsDir/no-such-model.gguf")) }
        val notAModel = java.io.File.createTempFile("not-a-model", ".gguf").apply { writeText("hello"); deleteOnExit() }
        expectThrows<MoeException.ModelLoad> { MoeEngine(config().copy(baseModel = notAModel.path)) }
        expectThrows<MoeException.InvalidInput> { MoeEngine(config(threads = 0u)) }
        expectThrows<MoeException.InvalidInput> { MoeEngine(config(budgetMb = 10u)) }
        val badPin = EdgeServerConfig("edge.local:4433", "abc", "token")
        val e = expectThrows<MoeException.InvalidInput> { MoeEngine(config(servers = listOf(badPin))) }
        check(e.message!!.contains("cert_sha256")) { "message: ${e.message}" }
    },
    "a throwing listener stops generation with Other" to {
        val rec = Recorder { n -> if (n == 2) throw IllegalStateException("UI went away") }
        val e = expectThrows<MoeException.Other> { engine.generate(FRANCE, greedy(64u), rec) }
        check(e.message!!.contains("UI went away")) { "message: ${e.message}" }
        checkEq(2, rec.pieces.size, "pieces")
        checkEq(FRANCE_ANSWER, engine.generate(FRANCE, greedy(64u), Recorder()).text, "next generation")
    },
    "Busy when the memory budget is in use" to {
        val modelMb = (java.io.File(baseModel).length() / (1 shl 20)).toUInt() + 1u
        // Each generation below reserves (42 + 64) tokens × 45 KB of KV cache ≈ 4.7 MB.
        val small = MoeEngine(config(budgetMb = modelMb + 8u))
        var inner: Throwable? = null
        val rec = Recorder { n ->
            if (n == 1) inner = runCatching { small.generate(FRANCE, greedy(64u), Recorder()) }.exceptionOrNull()
        }
        checkEq(FRANCE_ANSWER, small.generate(FRANCE, greedy(64u), rec).text, "first generation")
        check(inner is MoeException.Busy) { "second generation: $inner" }
        checkEq(0u, small.status().activeGenerations, "active generations")
        small.close()
    },
    "four threads generating at once get the single-thread answers" to {
        val prompts = listOf(FRANCE, "Name a colour.", "What is 2 + 2?", "Say hello.")
        val alone = prompts.map { engine.generate(it, greedy(24u), Recorder()).text }
        val together = arrayOfNulls<String>(4)
        val errors = Collections.synchronizedList(mutableListOf<Throwable>())
        prompts.mapIndexed { i, p ->
            thread { runCatching { together[i] = engine.generate(p, greedy(24u), Recorder()).text }.onFailure { errors.add(it) } }
        }.forEach { it.join() }
        checkEq(emptyList<Throwable>(), errors.toList(), "errors")
        checkEq(alone, together.toList(), "answers")
    },
    "an edge server answers one subtask over QUIC, the phone the other" to {
        EdgeServerProcess().use { server ->
            val e = MoeEngine(config(servers = listOf(server.config)).copy(policy = PolicyChoice.Greedy))
            val edge = e.status().edgeServers.single()
            check(edge.connected && "arithmetic" in edge.hosted) { "edge status $edge" }
            // Greedy follows the gate: the sum to the server hosting the arithmetic expert, prose on the phone.
            val prompt = "1. 347+258\n2. Write one sentence about the sea."
            val rec = Recorder()
            val result = e.generate(prompt, greedy(12u), rec)
            val placed = result.subtasks.map { Triple(it.expert, it.node, it.fellBack) }
            checkEq(listOf(Triple("arithmetic", server.config.address, false), Triple("prose", "phone", false)), placed, "placements")
            checkEq(rec.subtasks.sorted(), rec.subtasks.toList(), "subtasks stream in order")
            checkEq(result.text, rec.bySubtask().joinToString("\n\n"), "text")
            // The server dies: the same request is still answered in full, on the phone.
            server.process.destroyForcibly().waitFor()
            val again = e.generate(prompt, greedy(12u), Recorder())
            checkEq(listOf("phone", "phone"), again.subtasks.map { it.node }, "nodes after the server died")
            check(again.subtasks.all { it.generatedTokens > 0u }) { "empty subtask in $again" }
            e.close()
        }
    },
    "status reports config, device state and edge servers" to {
        val server = EdgeServerConfig("[::1]:4433", PIN, "secret-token")
        val e = MoeEngine(config(servers = listOf(server)))
        e.setDeviceState(0.25f, true, 0.5f)
        val s = e.status()
        checkEq(DeviceState(0.25f, true, 0.5f), s.device, "device")
        checkEq("sac" to 2u, s.policy to s.threads, "policy and threads")
        checkEq(listOf("[::1]:4433" to false), s.edgeServers.map { it.address to it.connected }, "edge servers")
        check(s.memoryInUseMb in 90u..s.memoryBudgetMb) { "memory in use ${s.memoryInUseMb} MB" }
        e.close()
    },
    "facade: load, Flow of tokens, placements in StateFlow" to {
        MoeEdgeSession().use { session ->
            runBlocking {
                checkEq(State.Idle, session.state.value, "initial state")
                session.load(config())
                check(session.state.value is State.Ready) { "state ${session.state.value}" }
                val pieces = session.generate(FRANCE, greedy(64u)).toList()
                checkEq(FRANCE_ANSWER, pieces.joinToString(""), "text")
                val ready = session.state.value as State.Ready
                checkEq(listOf(org.moeedge.Placement(0, FRANCE_EXPERT, "phone", ready.placements[0].tokens, done = true)), ready.placements, "placements")
                session.setDeviceState(0.5f, false, 0.1f)
                checkEq(0.5f, (session.state.value as State.Ready).status.device.battery, "battery")
            }
        }
    },
    "facade: stop() and collector cancellation stop the engine" to {
        MoeEdgeSession().use { session ->
            runBlocking {
                session.load(config())
                checkEq(3, session.generate("Tell me a long story about a dragon.", greedy(200u)).take(3).toList().size, "taken")
                session.state.first { it is State.Ready }
                checkEq(0u, (session.state.value as State.Ready).status.activeGenerations, "active after take(3)")
                val seen = AtomicInteger()
                val e = runCatching {
                    session.generate("Tell me a long story about a dragon.", greedy(200u)).collect {
                        if (seen.incrementAndGet() == 2) session.stop()
                    }
                }.exceptionOrNull()
                check(e is MoeException.Cancelled) { "got $e" }
                check(seen.get() <= 4) { "${seen.get()} pieces after stop()" }
                session.state.first { it is State.Ready }
            }
        }
    },
    "facade: failed load is a Failed state" to {
        MoeEdgeSession().use { session ->
            runBlocking {
                val e = runCatching { session.load(config().copy(baseModel = "/nonexistent/model.gguf")) }.exceptionOrNull()
                check(e is MoeException.ModelLoad) { "got $e" }
                check(session.state.value is State.Failed) { "state ${session.state.value}" }
                val noEngine = runCatching { session.generate(FRANCE).toList() }.exceptionOrNull()
                check(noEngine is MoeException.InvalidInput) { "got $noEngine" }
            }
        }
    },
)

fun main(args: Array<String>) {
    engine = MoeEngine(config())
    val only = args.firstOrNull()
    var passed = 0
    var failed = 0
    for ((name, test) in tests) {
        if (only != null && !name.contains(only)) continue
        val start = System.nanoTime()
        try {
            test()
            passed++
            println("PASS  $name (${(System.nanoTime() - start) / 1_000_000} ms)")
        } catch (e: Throwable) {
            failed++
            println("FAIL  $name: $e")
            e.printStackTrace()
        }
    }
    engine.close()
    println("$passed passed, $failed failed")
    System.exit(if (failed == 0 && passed > 0) 0 else 1)
}
