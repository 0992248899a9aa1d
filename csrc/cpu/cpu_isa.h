#pragma once
// The extension is compiled for baseline x86-64 so that it loads on any x86-64 CPU. Hot loops
// that the compiler can vectorise are marked RTSEG_CPU_CLONES: GCC then also builds them for
// x86-64-v4 (AVX-512) and x86-64-v3 (AVX2 + FMA) and picks one when the library is loaded.
// Mark only functions over raw pointers (no torch calls inside), so that no torch inline code
// is ever instantiated for a wider ISA than the CPU it may run on.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RTSEG_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define RTSEG_CPU_CLONES
#endif
