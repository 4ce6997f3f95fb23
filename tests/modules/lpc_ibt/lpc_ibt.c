// SPDX-License-Identifier: GPL-2.0
/*
 * lpc_ibt: a livepatch module for lpc_target (tests/modules/lpc_target)
 * that takes the address of lpc_target's static homonym (lpc_b.c's, POS 2),
 * a function lpc_target only ever calls directly: on an IBT kernel the
 * target's loader seals its ENDBR64 (objtool lists it in lpc_target's
 * .ibt_endbr_seal), so an indirect call to it is "Missing ENDBR".  klpsym
 * converts &homonym into the address of an IBT thunk (endbr64; jmp homonym,
 * the jmp a klp relocation of object lpc_target).  Load it after
 * lpc_target: its init calls through the pointer once the patch is enabled.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <klpsym.h>

extern int homonym(void);

static KLP_MODULE_RELOC(lpc_target) lpc_target_relocs[] __maybe_unused = {
	KLP_SYMPOS(homonym, 2),
};

/* A writable slot, so that the address stays a relocation in .data. */
static int (*homonym_ptr)(void) = homonym;

static int livepatch_lpc_target_value(void)
{
	return homonym() + READ_ONCE(homonym_ptr)();
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

static int __init lpc_ibt_init(void)
{
	int ret = klp_enable_patch(&patch);

	if (ret)
		return ret;
	pr_info("klptest lpc_ibt: via_ptr=%d ptr=%px\n", READ_ONCE(homonym_ptr)(),
		READ_ONCE(homonym_ptr));
	return 0;
}

static void __exit lpc_ibt_exit(void)
{
	WRITE_ONCE(homonym_ptr, NULL);	/* written: keeps the slot in .data */
}

module_init(lpc_ibt_init);
module_exit(lpc_ibt_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
