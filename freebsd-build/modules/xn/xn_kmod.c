/*-
 * SPDX-License-Identifier: BSD-2-Clause
 *
 * xn.ko: module registration; everything else is the Rust library (src/lib.rs).
 */
#include "xenrs_module.h"

XENRS_DRIVER_MODULE(xn);
