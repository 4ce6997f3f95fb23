// SPDX-License-Identifier: GPL-2.0
#include <linux/module.h>

static int lpc_data = 0xb0;

static __attribute__((__noipa__)) __used int homonym(void)
{
	return READ_ONCE(lpc_data);
}

int lpc_b_value(void)
{
	return homonym();
}
