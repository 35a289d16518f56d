// The same boundary from C++: the headers compile as C++ (extern "C"),
// and the library links with pkg-config's flags alone.
#include <cstdio>
#include <memory>
#include <string>

#include <livemig/livemig.h>

int main()
{
    if (std::string(lm_version()) != LM_VERSION_STRING) {
        std::fprintf(stderr, "headers and library disagree on the version\n");
        return 1;
    }
    lm_callbacks cb = {};
    cb.vm_stop = [](void *) {};
    cb.vm_start = [](void *) {};
    lm_error err = LM_ERROR_INIT;
    std::unique_ptr<lm_engine, void (*)(lm_engine *)> e(lm_engine_new(&cb, nullptr, &err),
                                                        lm_engine_free);
    if (!e) {
        std::fprintf(stderr, "lm_engine_new: %s\n", err.msg);
        return 1;
    }
    bool on = true;
    if (lm_engine_get_capability(e.get(), "postcopy-ram", &on, &err) < 0 || on) {
        std::fprintf(stderr, "postcopy-ram should default to off: %s\n", err.msg);
        return 1;
    }
    std::printf("livemig %s from C++: engine created and freed\n", lm_version());
    return 0;
}
