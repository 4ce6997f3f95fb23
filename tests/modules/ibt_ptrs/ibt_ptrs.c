// SPDX-License-Identifier: GPL-2.0
/*
 * ibt_ptrs: the address of an unexported, IBT-sealed function taken in every
 * way a module takes one, and called through (issue 16).
 *
 *   .rodata   - a const table                   -> .rela.rodata    R_X86_64_64
 *   .data     - a writable slot (exit uses it)  -> .rela.data      R_X86_64_64
 *   __initdata - a slot only init reads         -> .rela.init.data R_X86_64_64
 *   code      - the address loaded in init      -> .rela.init.text 32S (mov $imm32)
 *   lea       - a RIP-relative lea (inline asm)  -> .rela.init.text PC32, not a branch
 *   callback  - ipi_mb (kernel/sched/membarrier.c, static, unexported) handed
 *               to smp_call_function_single(), which calls it indirectly
 *
 * kallsyms_lookup_name is unexported (since 5.7) and its address is never
 * taken inside vmlinux, so on CONFIG_X86_KERNEL_IBT=y kernels (Debian 6.12
 * on) objtool lists it in .ibt_endbr_seal and the kernel overwrites its
 * ENDBR64 at boot: an indirect call to it is a #CP, "Missing ENDBR".  The
 * direct call (PLT32 of call rel32) is never checked.
 *
 * Each case prints what it called (fn), the first four bytes there (head:
 * f30f1efa is ENDBR64), the result and the one the direct call gives.
 * The direct call also finds the kernel's own kallsyms_lookup_name, whose
 * head is printed: the IBT poison where it is sealed.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/smp.h>

unsigned long kallsyms_lookup_name(const char *name);
typedef unsigned long (*lookup_fn)(const char *name);
void ipi_mb(void *info);

static const lookup_fn ro_table[] = { kallsyms_lookup_name };
static lookup_fn rw_slot = kallsyms_lookup_name;
static lookup_fn init_slot __initdata = kallsyms_lookup_name;

static unsigned long want;

static int report(const char *how, lookup_fn fn)
{
	unsigned long got = fn("jiffies");
	int match = got == want;

	pr_info("klptest ibt_ptrs: how=%s fn=%px head=%4phN got=%lx want=%lx match=%d\n",
		how, fn, (void *)fn, got, want, match);
	return match;
}

static int __init ibt_ptrs_init(void)
{
	const lookup_fn *table = ro_table;
	lookup_fn fn;
	unsigned long kernel_fn;
	int ok = 1;

	/* direct calls: never an IBT question */
	want = kallsyms_lookup_name("jiffies");
	kernel_fn = kallsyms_lookup_name("kallsyms_lookup_name");
	pr_info("klptest ibt_ptrs: how=direct kernel_fn=%px kernel_head=%4phN want=%lx\n",
		(void *)kernel_fn, (void *)kernel_fn, want);

	OPTIMIZER_HIDE_VAR(table);	/* gcc folds a load from a const table */
	ok &= report("rodata", table[0]);
	ok &= report("data", READ_ONCE(rw_slot));
	ok &= report("initdata", READ_ONCE(init_slot));
	fn = kallsyms_lookup_name;
	OPTIMIZER_HIDE_VAR(fn);	/* keep the load of the address in code */
	ok &= report("code", fn);
	asm ("lea kallsyms_lookup_name(%%rip), %0" : "=r" (fn));
	ok &= report("lea", fn);

	{
		smp_call_func_t cb = ipi_mb;
		int cpu = get_cpu();
		int ret;

		OPTIMIZER_HIDE_VAR(cb);
		ret = smp_call_function_single(cpu, cb, NULL, 1);
		put_cpu();
		ok &= ret == 0;
		pr_info("klptest ibt_ptrs: how=callback fn=%px head=%4phN ret=%d match=%d\n",
			cb, (void *)cb, ret, ret == 0);
	}
	pr_info("klptest ibt_ptrs: result=%s\n", ok ? "OK" : "MISMATCH");
	return 0;
}

static void __exit ibt_ptrs_exit(void)
{
	report("exit", READ_ONCE(rw_slot));
	WRITE_ONCE(rw_slot, NULL);
}

module_init(ibt_ptrs_init);
module_exit(ibt_ptrs_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klpsym test: a sealed unexported function called through pointers");
