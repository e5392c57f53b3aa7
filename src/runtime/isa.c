/* Instruction-set detection (CPUID + XGETBV, once) and the kernel table it selects.
 * The table is the only place that names per-ISA kernels; drivers read it through
 * fc_gemm_config_get() and fc_vector_config_get(). */
#include <pthread.h>
#include <stdint.h>

#include "fastconv.h"
#include "fc_kernels.h"

#if defined(FC_HAVE_X86_KERNELS)
#include <cpuid.h>

static uint64_t read_xcr0(void) {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return ((uint64_t)edx << 32) | eax;
}

static int detect_isa(void) {
  unsigned int eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return FC_ISA_SCALAR;
  const int osxsave = (ecx >> 27) & 1, avx = (ecx >> 28) & 1, fma = (ecx >> 12) & 1;
  if (!osxsave || !avx) return FC_ISA_SCALAR;
  const uint64_t xcr0 = read_xcr0();
  const int os_ymm = (xcr0 & 0x6) == 0x6;            /* SSE and AVX state */
  const int os_zmm = (xcr0 & 0xE6) == 0xE6;          /* plus opmask and ZMM state */
  if (!os_ymm || !__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return FC_ISA_SCALAR;
  const int avx2 = (ebx >> 5) & 1, avx512f = (ebx >> 16) & 1;
  if (avx512f && avx2 && fma && os_zmm) return FC_ISA_AVX512;
  if (avx2 && fma) return FC_ISA_AVX2;
  return FC_ISA_SCALAR;
}
#else
static int detect_isa(void) { return FC_ISA_SCALAR; }
#endif

#define VECTOR_CONFIG(isa)                                                                         \
  {fc_f32_wmacc_ukernel__##isa,       fc_f32_wmax_ukernel__##isa,                                  \
   fc_f32_maxpool2x2_ukernel__##isa,  fc_f32_maxpool3x3s1_ukernel__##isa,                          \
   fc_f32_maxpool3x3s2_ukernel__##isa, fc_f32_maxpool3x3s1_flat_ukernel__##isa,                    \
   fc_f32_vcopy_strided_ukernel__##isa, fc_f32_vdeinterleave_ukernel__##isa,                      \
   fc_f32_winograd_input_ukernel__##isa,                                                           \
   fc_f32_winograd_output_ukernel__##isa, fc_f32_winograd4_input_ukernel__##isa,                   \
   fc_f32_winograd4_output_ukernel__##isa,                                                         \
   fc_f32_vclamp_ukernel__##isa,      fc_f32_vadd_minmax_ukernel__##isa,                           \
   fc_f32_vaffine_ukernel__##isa,     fc_f32_dwconv3x3s1_ukernel__##isa,                           \
   fc_f32_dwconv3x3s2_ukernel__##isa, fc_f32_dwconv3x3s1_flat_ukernel__##isa,                      \
   fc_f32_dwconv3x3_cblock_ukernel__##isa, "f32_vector__" #isa}

/* Indexed by enum fc_isa. */
static const fc_gemm_config gemm_configs[] = {
    {fc_f32_gemm_minmax_ukernel_4x8__scalar, fc_f32_gemv_ukernel__scalar, 4, 8,
     "f32_gemm_minmax_ukernel_4x8__scalar"},
#if defined(FC_HAVE_X86_KERNELS)
    {fc_f32_gemm_minmax_ukernel_6x16__avx2, fc_f32_gemv_ukernel__avx2, 6, 16,
     "f32_gemm_minmax_ukernel_6x16__avx2", fc_f32_gemm_narrow_ukernel_12x4__avx2, 4},
    {fc_f32_gemm_minmax_ukernel_8x32__avx512f, fc_f32_gemv_ukernel__avx512f, 8, 32,
     "f32_gemm_minmax_ukernel_8x32__avx512f", fc_f32_gemm_narrow_ukernel_16x8__avx512f, 8,
     fc_f32_gemm_pixels_ukernel_8x32__avx512f},
#endif
};
static const fc_vector_config vector_configs[] = {
    VECTOR_CONFIG(scalar),
#if defined(FC_HAVE_X86_KERNELS)
    VECTOR_CONFIG(avx2),
    VECTOR_CONFIG(avx512f),
#endif
};

/* Detection runs once, whichever thread asks first. The cap is a process-wide setting, read
 * atomically; it must not change while other threads run operator calls (a call may read the
 * table more than once), see fastconv.runtime.isa_cap. */
static int detected = FC_ISA_SCALAR;
static int active = FC_ISA_SCALAR;
static pthread_once_t detect_once = PTHREAD_ONCE_INIT;

static void detect(void) {
  detected = detect_isa();
  __atomic_store_n(&active, detected, __ATOMIC_RELAXED);
}

static int active_isa(void) {
  pthread_once(&detect_once, detect);
  return __atomic_load_n(&active, __ATOMIC_RELAXED);
}

int fc_isa_detected(void) {
  pthread_once(&detect_once, detect);
  return detected;
}

int fc_isa_active(void) { return active_isa(); }

int fc_set_isa_cap(int cap) {
  const int best = fc_isa_detected();
  if (cap < FC_ISA_SCALAR) cap = FC_ISA_SCALAR;
  const int isa = cap < best ? cap : best;
  __atomic_store_n(&active, isa, __ATOMIC_RELAXED);
  return isa;
}

const char* fc_isa_name(int isa) {
  switch (isa) {
    case FC_ISA_AVX512: return "avx512";
    case FC_ISA_AVX2: return "avx2";
    default: return "scalar";
  }
}

const fc_gemm_config* fc_gemm_config_get(void) { return &gemm_configs[active_isa()]; }

const fc_vector_config* fc_vector_config_get(void) { return &vector_configs[active_isa()]; }

const char* fc_gemm_kernel_name(void) { return fc_gemm_config_get()->name; }
const char* fc_vector_kernel_name(void) { return fc_vector_config_get()->name; }
