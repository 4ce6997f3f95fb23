// SPDX-License-Identifier: GPL-2.0
/*
 * module_ns: calls cr4_read_shadow(), an export restricted to named modules
 * on Linux 7.x.
 *
 * Debian sid's 7.x exports it with EXPORT_SYMBOL_FOR_KVM(), i.e.
 * EXPORT_SYMBOL_FOR_MODULES(sym, "kvm,kvm-amd,kvm-intel") (include/linux/
 * export.h, v6.17+): Module.symvers has the namespace
 * "module:kvm,kvm-amd,kvm-intel", and the loader refuses the symbol to any
 * other module.  For this module it is as good as unexported, so klpsym
 * converts it there.  Older kernels (6.1, 6.12) export it to everyone
 * (EXPORT_SYMBOL in arch/x86/mm/tlb.c): there it stays an ordinary import.
 *
 * The answer is checked against CR4 read directly: the shadow is this CPU's
 * cached copy of the register, and CR4.PAE (bit 5) is set in long mode.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/preempt.h>
#include <asm/tlbflush.h>	/* cr4_read_shadow() */

static inline unsigned long read_cr4_directly(void)
{
	unsigned long val;

	asm volatile("mov %%cr4,%0" : "=r" (val));
	return val;
}

static int __init module_ns_init(void)
{
	unsigned long shadow, real;

	preempt_disable();
	shadow = cr4_read_shadow();
	real = read_cr4_directly();
	preempt_enable();
	pr_info("klptest module_ns: fn=%px shadow=%lx cr4=%lx match=%d pae=%d\n",
		(void *)cr4_read_shadow, shadow, real, shadow == real,
		!!(shadow & (1UL << 5)));
	return 0;
}

static void __exit module_ns_exit(void)
{
}

module_init(module_ns_init);
module_exit(module_ns_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klpsym test: a symbol exported to named modules only (7.x)");
