# install(): headers, the consr::consr / consr::eigen / consr::xtensor / consr::cuda targets, and
# consrConfig.cmake so that find_package(consr) works from the install prefix.
include(CMakePackageConfigHelpers)

set(CONSR_CMAKE_INSTALL_DIR "${CMAKE_INSTALL_LIBDIR}/cmake/consr" CACHE STRING "Where consrConfig.cmake is installed")

install(DIRECTORY "${PROJECT_SOURCE_DIR}/include/consr" DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}")

install(TARGETS consr EXPORT consrTargets)
install(EXPORT consrTargets NAMESPACE consr:: DESTINATION "${CONSR_CMAKE_INSTALL_DIR}")
foreach(backend eigen xtensor cuda)
  if(TARGET consr_${backend})
    install(TARGETS consr_${backend} EXPORT consr_${backend}_targets)
    install(EXPORT consr_${backend}_targets NAMESPACE consr:: DESTINATION "${CONSR_CMAKE_INSTALL_DIR}")
  endif()
endforeach()

configure_package_config_file("${PROJECT_SOURCE_DIR}/cmake/consrConfig.cmake.in"
                              "${PROJECT_BINARY_DIR}/consrConfig.cmake"
                              INSTALL_DESTINATION "${CONSR_CMAKE_INSTALL_DIR}")
write_basic_package_version_file("${PROJECT_BINARY_DIR}/consrConfigVersion.cmake"
                                 COMPATIBILITY SameMinorVersion ARCH_INDEPENDENT)
install(FILES "${PROJECT_BINARY_DIR}/consrConfig.cmake" "${PROJECT_BINARY_DIR}/consrConfigVersion.cmake"
        DESTINATION "${CONSR_CMAKE_INSTALL_DIR}")
