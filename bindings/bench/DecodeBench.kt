// The Kotlin side of the overhead benchmark (run-bench.sh): the same greedy
// generation as examples/decode_reference.rs, through MoeEngine.generate with a
// streaming listener. Prints one line per timed run: `kotlin <tokens> <decode tokens/s>`.

import org.moeedge.ffi.EngineConfig
import org.moeedge.ffi.GenerateOptions
import org.moeedge.ffi.GenerationEvent
import org.moeedge.ffi.GenerationListener
import org.moeedge.ffi.MoeEngine
import org.moeedge.ffi.PolicyChoice

class Collect : GenerationListener {
    val text = StringBuilder()

    override fun onText(subtask: UInt, text: String) {
        this.text.append(text)
    }

    override fun onEvent(event: GenerationEvent) {}
}

fun main(args: Array<String>) {
    val (model, modelsDir, runs, threads) = args
    val engine = MoeEngine(EngineConfig(model, modelsDir, threads.toUInt(), 1024u, emptyList(), PolicyChoice.LocalOnly))
    val options = GenerateOptions(maxTokens = 128u, temperature = 0f, topK = 0u, topP = 1f, minP = 0f)
    for (run in 0..runs.toInt()) {
        val result = engine.generate("Tell me a long story about a dragon.", options, Collect())
        // Run 0 warms up caches and thread pools.
        if (run > 0) println("kotlin ${result.generatedTokens} ${"%.3f".format(result.decodeTokensPerS)}")
    }
    engine.close()
}
