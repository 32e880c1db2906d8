"""float32 vs bfloat16 GEMM rate on this CPU (1 thread, CPU time of the calling thread, median of 20)."""
import os, time, torch
from vla_pruner_ros.model.precision import cpu_native_bf16_flags, resolve_dtype
torch.set_num_threads(1)
def rate(dtype, m, k, n, reps=20):
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        start = time.thread_time(); a @ b; times.append(time.thread_time() - start)
    return 2 * m * k * n / sorted(times)[reps // 2] / 1e9
print("torch", torch.__version__, "| native bf16 flags:", cpu_native_bf16_flags() or "none",
      "| dtype auto ->", resolve_dtype("auto", "cpu").describe(), "| load average", os.getloadavg())
for shape in [(601, 512, 1376), (601, 512, 512), (257, 1024, 4096)]:
    f32, bf16 = rate(torch.float32, *shape), rate(torch.bfloat16, *shape)
    print(f"M,K,N={shape}: float32 {f32:6.1f} GF/s  bfloat16 {bf16:6.1f} GF/s  bf16/float32 {bf16 / f32:.3f}")
