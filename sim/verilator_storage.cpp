// The external memory of a co-simulation harness as raw bytes, for bulk transfers.
//
// Verilator keeps an unpacked array of packed words contiguously, each word little-endian (a
// uint64_t, or 32-bit limbs least significant first), so on a little-endian host the bytes of
// the RAM's storage array are exactly the memory's bytes.  The array must be public (the build's
// control file makes `<...>.ram.storage.mem` public_flat_rw).

#include <stdint.h>
#include <string.h>

#include <string>

#include "verilated.h"
#include "verilated_syms.h"

extern "C" {
// The storage array of the harness's RAM: its address and size in bytes, and the bytes of one
// word; a null address (and the reason in *error) if the design has none.
void *braze_storage(uint64_t *nbytes, uint32_t *word_bytes, const char **error) {
    static std::string reason;
    const VerilatedScopeNameMap *scopes = Verilated::threadContextp()->scopeNameMap();
    const char *suffix = ".ram.storage";
    const size_t suffix_len = strlen(suffix);
    for (const auto &entry : *scopes) {
        const std::string name = entry.first;
        if (name.size() < suffix_len || name.compare(name.size() - suffix_len, suffix_len, suffix) != 0)
            continue;
        VerilatedVar *var = entry.second->varFind("mem");
        if (!var) continue;
        if (var->udims() != 1 || var->entBits() % 8 != 0) {
            reason = "the storage array " + name + ".mem is not an array of whole-byte words";
            *error = reason.c_str();
            return nullptr;
        }
        const uint32_t bytes_per_word = var->entBits() / 8;
        const uint64_t words = var->unpackedRanges()[0].elements();
        // Verilator pads words to whole 32- or 64-bit units: the array is contiguous memory
        // only when a word fills its unit exactly.
        if (var->entSize() != bytes_per_word) {
            reason = "the storage words of " + name + ".mem are padded in Verilator's layout";
            *error = reason.c_str();
            return nullptr;
        }
        *nbytes = words * bytes_per_word;
        *word_bytes = bytes_per_word;
        return var->datap();
    }
    *error = "the design has no public storage array `<...>.ram.storage.mem`";
    return nullptr;
}
}
