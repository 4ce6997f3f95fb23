// SPDX-License-Identifier: GPL-2.0
/*
 * hello_klp - the smallest useful module that needs klpsym.
 *
 * Since Linux 5.7, kallsyms_lookup_name() is no longer exported to modules.
 * It is still declared in <linux/kallsyms.h> and still present in the
 * running kernel, but a module that calls it fails to load:
 *
 *     insmod: ERROR: could not insert module hello_klp.ko: Unknown symbol in module
 *     dmesg:  hello_klp: Unknown symbol kallsyms_lookup_name (err -2)
 *
 * Build it normally (modpost only warns with KBUILD_MODPOST_WARN=1), then
 *
 *     klpsym convert hello_klp.ko -o hello_klp.klp.ko \
 *            --kernel-dir KDIR --kallsyms kallsyms.txt
 *
 * turns the call into a livepatch relocation that the kernel's own module
 * loader resolves through kallsyms when the module is inserted.  The C code
 * below is ordinary: nothing in it knows about klpsym.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/kallsyms.h>	/* declares kallsyms_lookup_name() */
#include <linux/jiffies.h>	/* jiffies: an EXPORTED variable */

/*
 * Where a function pointer leads.  On a kernel built with IBT (Debian from
 * 6.12) klpsym makes the module's &f of an unexported function point at a
 * small thunk in the module, "endbr64; jmp f", because the kernel may have
 * sealed f itself against indirect calls (README, IBT): follow it.
 */
static unsigned long leads_to(unsigned long p)
{
	const u8 *b = (const u8 *)p;

	if (b[0] == 0xf3 && b[1] == 0x0f && b[2] == 0x1e && b[3] == 0xfa && b[4] == 0xe9)
		return p + 9 + *(const s32 *)(b + 5);
	return p;
}

static int __init hello_klp_init(void)
{
	/*
	 * 1. Ask the kernel for the address of an exported variable.  The
	 *    module also knows that address the ordinary way (&jiffies is
	 *    resolved by the loader from the kernel's export table), so the
	 *    two must agree.  A wrong answer means the call did not reach
	 *    the real kallsyms_lookup_name().
	 */
	unsigned long by_name = kallsyms_lookup_name("jiffies");
	unsigned long by_link = (unsigned long)&jiffies;

	/*
	 * 2. Look up something that is NOT exported: the function we are
	 *    calling.  Its address comes back from the kernel's symbol table;
	 *    the direct reference (taken by the loader from the livepatch
	 *    relocation, through klpsym's thunk on an IBT kernel) must lead
	 *    to it.
	 */
	unsigned long self_by_name = kallsyms_lookup_name("kallsyms_lookup_name");
	unsigned long self_by_link = (unsigned long)kallsyms_lookup_name;

	int ok = by_name == by_link && self_by_name == leads_to(self_by_link) && by_name;

	pr_info("klptest hello: jiffies_by_name=%px jiffies_by_link=%px\n",
		(void *)by_name, (void *)by_link);
	pr_info("klptest hello: kallsyms_lookup_name=%px by_link=%px leads_to=%px\n",
		(void *)self_by_name, (void *)self_by_link, (void *)leads_to(self_by_link));
	pr_info("klptest hello: result=%s\n", ok ? "OK" : "MISMATCH");
	return 0;
}

static void __exit hello_klp_exit(void)
{
	pr_info("klptest hello: unloaded\n");
}

module_init(hello_klp_init);
module_exit(hello_klp_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klpsym demo: call the unexported kallsyms_lookup_name()");
