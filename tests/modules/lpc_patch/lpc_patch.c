// SPDX-License-Identifier: GPL-2.0
/*
 * lpc_patch: a livepatch module for lpc_target (tests/modules/lpc_target).
 * It replaces lpc_target_value() and calls lpc_target's second static
 * "homonym" (lpc_b.c's, POS 2: chosen by the annotation below), reads its
 * static lpc_data (unique: POS 0), and calls vmlinux's unexported
 * kallsyms_lookup_name.  klpsym turns each into .klp.sym.OBJ.NAME,POS and
 * removes the annotation.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <klpsym.h>

extern int homonym(void);
extern int lpc_data;
unsigned long kallsyms_lookup_name(const char *name);

static KLP_MODULE_RELOC(lpc_target) lpc_target_relocs[] __maybe_unused = {
	KLP_SYMPOS(homonym, 2),
};

static int livepatch_lpc_target_value(void)
{
	return homonym() + lpc_data + !!kallsyms_lookup_name("jiffies");
}

static struct klp_func funcs[] = {
	{ .old_name = "lpc_target_value", .new_func = livepatch_lpc_target_value, },
	{ }
};

static struct klp_object objs[] = {
	{ .name = "lpc_target", .funcs = funcs, },
	{ }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

static int __init lpc_patch_init(void)
{
	return klp_enable_patch(&patch);
}

static void __exit lpc_patch_exit(void)
{
}

module_init(lpc_patch_init);
module_exit(lpc_patch_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
