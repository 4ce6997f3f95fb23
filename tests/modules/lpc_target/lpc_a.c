// SPDX-License-Identifier: GPL-2.0
/*
 * lpc_target: a module a livepatch (tests/modules/lpc_patch) patches and
 * whose unexported symbols it uses: a static "homonym" in each of its two
 * files (lpc_a.c first in the symbol table, so POS 1; lpc_b.c POS 2),
 * static data, and a global function that is not exported.
 */
#include <linux/module.h>
#include <linux/kernel.h>

/* noipa: gcc 14 would replace a call by its constant result and drop the
 * function (noinline alone does not stop that); __used keeps it anyway. */
static __attribute__((__noipa__)) __used int homonym(void)
{
	return 0xa;
}

int lpc_b_value(void);

noinline int lpc_target_value(void)
{
	return homonym() + lpc_b_value();
}

static int __init lpc_target_init(void)
{
	pr_info("lpc_target: value=%d\n", lpc_target_value());
	return 0;
}

static void __exit lpc_target_exit(void)
{
}

module_init(lpc_target_init);
module_exit(lpc_target_exit);
MODULE_LICENSE("GPL");
