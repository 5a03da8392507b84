// Library module: the generated Kotlin bindings (src/main/kotlin/org/moeedge/ffi,
// written by ../build-android.sh), the native libraries (src/main/jniLibs) and the
// MoeEdgeSession facade. No UI.
plugins {
    id("com.android.library")
    id("org.jetbrains.kotlin.android")
}

android {
    namespace = "org.moeedge"
    compileSdk = 36
    defaultConfig {
        minSdk = 26
        consumerProguardFiles("consumer-rules.pro")
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
}

kotlin {
    jvmToolchain(17)
}

dependencies {
    // uniffi's Kotlin calls the native library through JNA; the AAR carries JNA's own .so files.
    implementation("net.java.dev.jna:jna:5.18.1@aar")
    api("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.10.2")
}
