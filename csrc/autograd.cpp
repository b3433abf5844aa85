// Autograd formulas of the differentiable fastprune ops, registered at the
// Autograd dispatch key (all backends), so that a pruned module's forward
// pre-hook stays in C++ from the dispatcher call to the kernel. A formula
// written in Python (torch.library.register_autograd) makes every call of the
// op, gradients wanted or not, a round trip through the Python interpreter:
// ~10-15 us a call, more than the kernel itself for a layer of a few thousand
// units. Without the extension, fastprune/ops/__init__.py registers the same
// formulas in Python.
//
// mask_mul(input, mask) = input * mask:
//   d/d input = grad * mask (the same op again, so double backward works),
//   d/d mask  = grad * input, in the mask's dtype.
#include <torch/autograd.h>
#include <torch/library.h>

namespace fastprune {
namespace {

at::Tensor call_mask_mul(const at::Tensor& input, const at::Tensor& mask) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastprune::mask_mul", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  return op.call(input, mask);
}

class MaskMulFunction : public torch::autograd::Function<MaskMulFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input, const at::Tensor& mask) {
    // The input is saved only when the mask's gradient is wanted.
    ctx->save_for_backward({mask, mask.requires_grad() ? input : at::Tensor()});
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_mask_mul(input, mask);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& mask = saved[0];
    const at::Tensor& grad = grads[0];
    at::Tensor grad_input, grad_mask;
    if (ctx->needs_input_grad(0)) grad_input = call_mask_mul(grad, mask);
    if (ctx->needs_input_grad(1)) grad_mask = grad.mul(saved[1]).to(mask.scalar_type());
    return {grad_input, grad_mask};
  }
};

at::Tensor mask_mul_autograd(const at::Tensor& input, const at::Tensor& mask) {
  if (!at::GradMode::is_enabled() || !(input.requires_grad() || mask.requires_grad())) {
    // No graph to record (the pre-hook under no_grad / inference): straight to
    // the kernel, without creating an autograd node.
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_mask_mul(input, mask);
  }
  return MaskMulFunction::apply(input, mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastprune, Autograd, m) { m.impl("mask_mul", &mask_mul_autograd); }

}  // namespace fastprune
