/* Preloaded into a benchmark worker (LD_PRELOAD) by bench/sparse_without_avx.py: the process
   sees a CPU without AVX, so XNNPACK picks its SSE kernels and may run its sparse path.

   Linux's CPUID faulting (arch_prctl ARCH_SET_CPUID, 0) makes every CPUID instruction of
   this process trap with SIGSEGV. The handler runs the real CPUID with faulting briefly off,
   clears the AVX family's bits (and OSXSAVE, so nothing tries XGETBV for AVX state) and
   steps over the instruction. Everything else runs natively on the real cores. A process
   that cannot turn faulting on (no `cpuid_fault` in /proc/cpuinfo) aborts at once rather
   than run with AVX. */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

static void real_cpuid(unsigned leaf, unsigned sub, unsigned r[4]) {
  syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
  __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
  syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
}

/* Leaf 7 EBX: kept are the bits that are not vector extensions (FSGSBASE, BMI1/2, ERMS,
   RDSEED, ADX, SHA, ...); cleared are AVX2 (bit 5) and the AVX-512 family (16, 17, 21,
   26-28, 30, 31). ECX and EDX (VNNI, VBMI, AMX, ...) are cleared whole. */
#define LEAF7_EBX_KEEP 0x23dcffdfu

static void on_segv(int sig, siginfo_t *info, void *context) {
  greg_t *reg = ((ucontext_t *)context)->uc_mcontext.gregs;
  const unsigned char *ip = (const unsigned char *)reg[REG_RIP];
  unsigned leaf, sub, r[4];
  (void)info;
  if (ip[0] != 0x0f || ip[1] != 0xa2) { /* a real fault: crash as without us */
    signal(sig, SIG_DFL);
    return;
  }
  leaf = (unsigned)reg[REG_RAX];
  sub = (unsigned)reg[REG_RCX];
  real_cpuid(leaf, sub, r);
  if (leaf == 1) /* OSXSAVE, AVX, FMA, F16C */
    r[2] &= ~((1u << 27) | (1u << 28) | (1u << 12) | (1u << 29));
  if (leaf == 7) { /* AVX2, AVX-512*, AVX-VNNI, AMX ... */
    r[1] = sub == 0 ? r[1] & LEAF7_EBX_KEEP : 0;
    r[0] = sub == 0 ? r[0] : 0;
    r[2] = r[3] = 0;
  }
  if (leaf == 0xd) /* XSAVE state: x87 and SSE only */
    r[0] &= 3;
  reg[REG_RAX] = r[0];
  reg[REG_RBX] = r[1];
  reg[REG_RCX] = r[2];
  reg[REG_RDX] = r[3];
  reg[REG_RIP] += 2;
}

__attribute__((constructor)) static void hide_avx(void) {
  struct sigaction action = {0};
  action.sa_sigaction = on_segv;
  action.sa_flags = SA_SIGINFO;
  sigaction(SIGSEGV, &action, 0);
  if (syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0)
    abort();
}
