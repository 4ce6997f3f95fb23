// SPDX-License-Identifier: GPL-2.0
/*
 * fn_pointers: pointers to unexported functions stored in module DATA, not
 * in code, and called through.
 *
 *   .data   - a writable static function pointer   -> .rela.data   R_X86_64_64
 *   .rodata - a const "ops" struct of two pointers -> .rela.rodata R_X86_64_64
 *
 * The functions are three BPF helpers from kernel/bpf/helpers.c
 * (CONFIG_BPF_SYSCALL=y on Debian), defined with BPF_CALL_x() as
 * global, unexported functions taking five u64 arguments:
 *
 *   bpf_get_current_pid_tgid() -> (u64)current->tgid << 32 | current->pid
 *   bpf_get_current_comm(buf, size) -> copies current->comm, returns 0
 *   bpf_ktime_get_ns()         -> ktime_get_mono_fast_ns()
 *
 * Why these: they have no side effects, their results are checkable from
 * here, and their addresses are taken inside vmlinux (the .func member of
 * the bpf_func_proto tables, which the BPF interpreter calls indirectly).
 * That matters on kernels built with CONFIG_X86_KERNEL_IBT=y: objtool seals
 * (removes the ENDBR from) functions whose address is never taken in
 * vmlinux, and an indirect call from a module into such a function would
 * fault with #CP.  Debian bookworm's 6.1 has CONFIG_X86_KERNEL_IBT unset, so
 * it would not matter there, but these choices stay valid on IBT kernels.
 *
 * gcc would happily fold a call through a pointer it can prove constant
 * into a direct call (and drop the pointer): READ_ONCE() forces a real load
 * from the .data/.rodata slot, so the relocation in that slot is what runs.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/sched.h>
#include <linux/string.h>
#include <linux/timekeeping.h>

typedef u64 (*bpf_helper_fn)(u64, u64, u64, u64, u64);

/* Prototypes as BPF_CALL_x() defines them; no header declares them. */
u64 bpf_get_current_pid_tgid(u64, u64, u64, u64, u64);
u64 bpf_get_current_comm(u64 buf, u64 size, u64, u64, u64);
u64 bpf_ktime_get_ns(u64, u64, u64, u64, u64);

/*
 * .data: a writable callback slot.  The module really writes it (exit clears
 * it); a static that is never written is moved to .rodata by gcc.
 */
static bpf_helper_fn pid_tgid_slot = bpf_get_current_pid_tgid;

/* .rodata: a const ops table, the usual shape of kernel callbacks. */
struct klptest_ops {
	bpf_helper_fn comm;
	bpf_helper_fn ktime;
};

static const struct klptest_ops klptest_ops = {
	.comm = bpf_get_current_comm,
	.ktime = bpf_ktime_get_ns,
};

static int __init fn_pointers_init(void)
{
	bpf_helper_fn fn;
	u64 got, want, t0, t1;
	char comm[TASK_COMM_LEN] = "";
	int ok = 1, match;

	/* 1. through the writable pointer in .data */
	fn = READ_ONCE(pid_tgid_slot);
	got = fn(0, 0, 0, 0, 0);
	want = (u64)current->tgid << 32 | current->pid;
	match = got == want;
	ok &= match;
	pr_info("klptest fn_pointers: slot=data name=bpf_get_current_pid_tgid fn=%px got=%llu want=%llu match=%d\n",
		fn, got, want, match);

	/* 2. through the const struct in .rodata */
	fn = READ_ONCE(klptest_ops.comm);
	got = fn((unsigned long)comm, sizeof(comm), 0, 0, 0);
	match = got == 0 && strcmp(comm, current->comm) == 0;
	ok &= match;
	pr_info("klptest fn_pointers: slot=rodata.comm name=bpf_get_current_comm fn=%px ret=%llu comm=%s match=%d\n",
		fn, got, comm, match);

	fn = READ_ONCE(klptest_ops.ktime);
	t0 = ktime_get_mono_fast_ns();
	got = fn(0, 0, 0, 0, 0);
	t1 = ktime_get_mono_fast_ns();
	match = t0 <= got && got <= t1;
	ok &= match;
	pr_info("klptest fn_pointers: slot=rodata.ktime name=bpf_ktime_get_ns fn=%px t0=%llu got=%llu t1=%llu match=%d\n",
		fn, t0, got, t1, match);

	pr_info("klptest fn_pointers: result=%s\n", ok ? "OK" : "MISMATCH");
	return 0;
}

static void __exit fn_pointers_exit(void)
{
	WRITE_ONCE(pid_tgid_slot, NULL);
}

module_init(fn_pointers_init);
module_exit(fn_pointers_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klpsym test: unexported functions called through .data and .rodata pointers");
